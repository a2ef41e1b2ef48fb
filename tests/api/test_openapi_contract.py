"""The API's OpenAPI document tells the truth: a client generated from ``/openapi.json`` is never
surprised by an answer.

The main test runs schemathesis as its CLI runs (``schemathesis run URL --checks all``: every
check, every phase: examples, coverage, fuzzing, stateful) against the real app served by
uvicorn on loopback, with tiny trained artifacts and ranker, a real (embedded) Redis and an API
key, bounded and deterministic (``--generation-deterministic``, ``--max-examples``), and asks for
0 failures over at least a thousand generated requests. ``tests/schemathesis_hooks.py`` holds
the two things a static document or the wire cannot say (an event's ``ts`` relative to the
server's clock; a repeated query parameter given one value). The other tests pin each
correction the run depends on, so that a regression names what broke.

By hand, against any running server (``outerloop serve``), as the issue ran it::

    SCHEMATHESIS_HOOKS=tests.schemathesis_hooks .venv/bin/schemathesis run \\
        http://127.0.0.1:8000/openapi.json --checks all [-H "X-API-Key: $OUTERLOOP_API_KEY"]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from outerloop.api.app import create_app
from outerloop.api.context import ServeOptions
from outerloop.config import Settings
from outerloop.contracts.keys import namespaced_keys
from outerloop.inner_loop.serving.funnel import FunnelConfig
from outerloop.ports import free_port
from outerloop.storage.clients import RedisTarget
from outerloop.storage.embedded import release_embedded
from tests.api.test_api_fixtures import event, tiny_artifacts, tiny_dir, tiny_ranker  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
KEY = "contract-test-key"
MAX_EXAMPLES = 50  # per operation and phase; with the coverage phase's cases, ~2,000 requests
MIN_CASES = 1000


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTarget]:
    """One embedded Redis for the module (the contract does not depend on the backend)."""
    t = RedisTarget(embedded_dir=tmp_path_factory.mktemp("contract-redis"))
    yield t
    release_embedded(t.embedded_dir, save=False)


def make_app(artifacts: Any, ranker: Any, target: RedisTarget, api_key: str | None = KEY) -> Any:
    options = ServeOptions(api_key=api_key, funnel=FunnelConfig(max_history=50),
                           redis_read_timeout_ms=5000.0)
    return create_app(Settings(), artifacts, ranker=ranker, options=options, redis_target=target,
                      keys=namespaced_keys(f"oltest-contract-{os.getpid()}"))


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a loopback port, in a thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           lifespan="on", loop="asyncio", http="h11"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_schemathesis_checks_all_finds_nothing(tiny_artifacts, tiny_ranker, target,  # noqa: F811
                                               tmp_path: Path) -> None:
    report = tmp_path / "schemathesis.json"
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
           "--generation-deterministic", "--workers", "1", "--no-color", "--output-truncate", "true",
           "--request-timeout", "30", "-H", f"X-API-Key: {KEY}",
           "--report", "json", "--report-json-path", str(report)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    with serving(make_app(tiny_artifacts, tiny_ranker, target)) as base:
        out = subprocess.run([*cmd, f"{base}/openapi.json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
    took = time.perf_counter() - started
    assert report.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    doc = json.loads(report.read_text())
    cases = doc["test_cases"]
    print(f"\nschemathesis --checks all: {cases['generated']} cases, {len(doc['failures'])} failures, "
          f"{len(doc['errors'])} errors, {doc['operations']['tested']}/{doc['operations']['total']} operations, "
          f"{took:.1f} s")
    assert out.returncode == 0 and doc["failures"] == [] and doc["errors"] == [], out.stdout[-6000:]
    assert cases["generated"] >= MIN_CASES and cases["with_failures"] == 0 and cases["errored"] == 0
    assert doc["operations"]["tested"] == doc["operations"]["total"] >= 9
    assert {name: p["status"] for name, p in doc["phases"].items()} == {
        "examples": "success", "coverage": "success", "fuzzing": "success", "stateful": "success"}


# --- the corrections, one by one -----------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tiny_artifacts, tiny_ranker, target) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(make_app(tiny_artifacts, tiny_ranker, target), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def test_every_error_response_documents_the_body_the_api_sends(client: TestClient, spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            params_or_body = op.get("parameters") or op.get("requestBody")
            assert not params_or_body or "422" in op["responses"], (path, method)
            for status, resp in op["responses"].items():
                if status[0] in "45":
                    assert resp["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorOut"}, (path, method, status)
    body = client.get("/v1/items/abc").json()  # a 422 from FastAPI's own validation
    assert set(body) == {"detail", "errors"} and body["errors"][0] == {"loc": "path.item_id", "msg": body["errors"][0]["msg"]}
    assert set(spec["components"]["schemas"]["ErrorOut"]["properties"]) == {"detail", "errors"}


def test_event_batches_say_their_bounds_and_are_refused_as_documented(client: TestClient, spec: dict[str, Any],
                                                                      tiny_artifacts) -> None:  # noqa: F811
    forms = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert forms[1]["minItems"] == 1 and forms[1]["maxItems"] == 500
    assert forms[2]["additionalProperties"] is False and forms[2]["properties"]["events"]["minItems"] == 1
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    too_many = client.post("/v1/events", content=json.dumps([event("u", 1)] * 501), headers=headers)
    assert too_many.status_code == 422 and "over the limit of 500" in too_many.json()["detail"]  # was 413
    assert client.post("/v1/events", content=b"[]", headers=headers).status_code == 422
    ev = spec["components"]["schemas"]["Event"]
    assert ev["properties"]["item_id"]["anyOf"][0] == {"type": "integer", "minimum": 1,
                                                      "maximum": len(tiny_artifacts.catalog)}
    assert ev["properties"]["ts"]["minimum"] == 946_684_800_000 and "x-max-future-skew-ms" in ev["properties"]["ts"]
    assert {"properties": {"type": {"const": "search"}}, "required": ["type"]} in ev["anyOf"]
    # JSON types as the schema says them: 5.0 is an integer, "5" is not, " u" is not a user id
    ok = client.post("/v1/events", content=json.dumps(event("contract-u", 5.0)), headers=headers)
    assert ok.status_code == 200, ok.text
    for bad, field in ((event("contract-u", "5"), "item_id"), (event(" contract-u", 5), "user_id"),
                       ({**event("contract-u", 5), "ts": str(event("u", 5)["ts"])}, "ts")):
        r = client.post("/v1/events", content=json.dumps(bad), headers=headers)
        assert r.status_code == 422 and field in r.json()["detail"], (bad, r.text)


def test_the_profile_body_says_exactly_one_and_which_zones(client: TestClient, spec: dict[str, Any]) -> None:
    profile = spec["components"]["schemas"]["ProfileIn"]
    assert [sorted(b["required"]) for b in profile["anyOf"]] == [["utc_offset_min"], ["timezone"]]
    assert "Europe/Paris" in profile["properties"]["timezone"]["anyOf"][0]["enum"]
    headers = {"X-API-Key": KEY}
    for body in ({}, {"utc_offset_min": 60, "timezone": "Europe/Paris"}, {"timezone": "Mars/Olympus"},
                 {"utc_offset_min": "60"}):
        r = client.put("/v1/users/contract-u/profile", json=body, headers=headers)
        assert r.status_code == 422, (body, r.text)
    assert client.put("/v1/users/contract-u/profile", json={"utc_offset_min": 60.0, "timezone": None},
                      headers=headers).status_code == 200


def test_a_405_allows_every_method_of_the_path(client: TestClient) -> None:
    r = client.request("OPTIONS", "/v1/users/u/profile")
    assert r.status_code == 405 and r.headers["allow"] == "GET, PUT"  # was "PUT" alone
    assert client.delete("/v1/events").headers["allow"] == "POST"


def test_repeated_single_value_parameters_are_refused(client: TestClient) -> None:
    r = client.get("/v1/users/u/recommendations?k=5&k=9")
    assert r.status_code == 422 and "query.k" in r.json()["detail"]
    assert client.get("/v1/users/u/recommendations?row=popular&row=explore").status_code == 200


def test_write_operations_declare_the_api_key(spec: dict[str, Any], tiny_artifacts, tiny_ranker,  # noqa: F811
                                              target) -> None:
    assert spec["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert spec["paths"]["/v1/events"]["post"]["security"] == [{"ApiKey": []}]
    assert "401" in spec["paths"]["/v1/users/{user_id}/profile"]["put"]["responses"]
    assert "security" not in spec["paths"]["/v1/users/{user_id}/recommendations"]["get"]
    with TestClient(make_app(tiny_artifacts, tiny_ranker, target, api_key=None)) as open_client:
        assert "securitySchemes" not in open_client.get("/openapi.json").json()["components"]


def test_conversation_turns_name_catalog_items_and_a_message_is_not_blank(spec: dict[str, Any],
                                                                         tiny_artifacts) -> None:  # noqa: F811
    turn_items = spec["components"]["schemas"]["Turn"]["properties"]["item_ids"]["items"]
    assert turn_items == {"type": "integer", "minimum": 1, "maximum": len(tiny_artifacts.catalog)}
    assert "pattern" in spec["components"]["schemas"]["ConversationRequest"]["properties"]["message"]
