"""The console without a browser: operator control reaching the real outer loop through the
daemon's runner (pause, resume, budget), the journal the daemons write, the views the API
serves from it, the request figures, and who may read or change what (real Redis; the real
agents on tiny artifacts). The browser tests are in ``test_console_browser.py``."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from outerloop.agents.loop import OuterLoop
from outerloop.api.app import create_app
from outerloop.api.context import ServeOptions
from outerloop.config import Settings
from outerloop.contracts.keys import counts_key, daemons_key, runs_key, user_journal_key
from outerloop.contracts.triggers import TITLE_FINISHED
from outerloop.inner_loop.serving.funnel import FunnelConfig
from outerloop.scheduler import control as ctl
from outerloop.scheduler.runners import OuterLoopRunner
from outerloop.scheduler.triggers import PendingTrigger
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from tests.api.test_api_fixtures import event, now_ms, tiny_artifacts, tiny_data, tiny_dir, tiny_ranker  # noqa: F401
from tests.agents.test_outer_loop_support import BASE_TS, TinyArtifacts, apply_events, episode_id, ev
from tests.scheduler.test_scheduler_helpers import Env, env  # noqa: F401

KEY = "console-key"


def finished(*events: Any) -> PendingTrigger:
    """The scheduler's trigger for finished titles, as a claim hands it to the runner."""
    return PendingTrigger(name=TITLE_FINISHED, count=len(events), first_ms=now_ms(), last_ms=now_ms(),
                   event_ids=tuple(e.event_id for e in events), events=list(events))


async def _cycle(runner: OuterLoopRunner, user: str, n: int) -> Any:
    events = [ev(user, "play", episode_id(n), BASE_TS + n * 600_000),
              ev(user, "finish", episode_id(n), BASE_TS + n * 600_000 + 60_000)]
    await apply_events(runner.client, runner.keys.base, events)
    return await runner(user, [finished(events[1])])


async def test_pause_resume_and_budget_reach_the_cycles(env: Env) -> None:  # noqa: F811
    loop = OuterLoop(TinyArtifacts(), redis=env.client, keys=env.keys.base)
    runner = OuterLoopRunner(loop, env.client, env.keys)
    base = env.keys.base
    try:
        out = await _cycle(runner, "op1", 1)
        first = json.loads((await env.client.lrange(user_journal_key(base, "op1"), 0, 0))[0])
        ran = [r["agent"] for r in first["records"]]
        assert "tools" in ran and out.rows_committed >= 1
        assert "continue_watching" in first["committed"] and first["refresh_ms"] is not None
        row_before = json.loads(await env.client.hget(base.rows("op1"), "continue_watching"))

        await ctl.apply_change(env.client, base, "tools", "pause", by="alice", source="test", note="bad rows")
        await _cycle(runner, "op1", 2)
        paused = json.loads((await env.client.lrange(user_journal_key(base, "op1"), 0, 0))[0])
        assert "tools" not in [r["agent"] for r in paused["records"]]
        assert any("tools: paused by alice" in n for n in paused["notes"]), paused["notes"]
        assert "tools" not in [s["agent"] for p in paused["plans"] for s in p["steps"]]
        # the paused agent's row stays as it was: served until it expires
        assert json.loads(await env.client.hget(base.rows("op1"), "continue_watching")) == row_before

        await ctl.apply_change(env.client, base, "tools", "budget", by="bob", budget=ctl.budget_from(7.5))
        await ctl.apply_change(env.client, base, "tools", "resume", by="alice")
        await _cycle(runner, "op1", 3)
        resumed = json.loads((await env.client.lrange(user_journal_key(base, "op1"), 0, 0))[0])
        tools = [r for r in resumed["records"] if r["agent"] == "tools"]
        assert tools and all(r["budget_ms"] == 7.5 for r in tools)
        assert json.loads(await env.client.hget(base.rows("op1"), "continue_watching"))["run_id"] != row_before["run_id"] \
            or tools[0]["outcome"] != "ok"  # a 7.5 ms budget may kill it: then nothing is committed

        await ctl.apply_change(env.client, base, "tools", "reset_budget", by="bob")
        await _cycle(runner, "op1", 4)
        reset = json.loads((await env.client.lrange(user_journal_key(base, "op1"), 0, 0))[0])
        declared = loop.agents.get("tools").budget.latency_ms
        assert [r["budget_ms"] for r in reset["records"] if r["agent"] == "tools"] == [declared]

        log = await ctl.read_log(env.client, base)
        assert [(e["action"], e["by"]) for e in log] == [("reset_budget", "bob"), ("resume", "alice"),
                                                         ("budget", "bob"), ("pause", "alice")]
        assert log[-1]["note"] == "bad rows" and log[-1]["source"] == "test" and log[-1]["at_ms"] > 0
        # the journal's totals and the daemon's report
        counts = {k.decode(): int(v) for k, v in (await env.client.hgetall(counts_key(base))).items()}
        assert counts["tools|ok"] + counts.get("tools|killed", 0) == 3 and counts["memory|ok"] == 4
        assert await env.client.xlen(runs_key(base)) == 4
        doc = json.loads(next(iter((await env.client.hgetall(daemons_key(base))).values())))
        assert doc["agents"]["tools"]["budget_ms"] == declared and doc["shards"] == 1
    finally:
        await loop.aclose()


async def test_a_budget_override_is_capped_below_the_graphs_backstop(env: Env) -> None:  # noqa: F811
    loop = OuterLoop(TinyArtifacts(), redis=env.client, keys=env.keys.base)
    runner = OuterLoopRunner(loop, env.client, env.keys)
    try:
        await ctl.apply_change(env.client, env.keys.base, "tools", "budget", by="x", budget=ctl.budget_from(59_000))
        await _cycle(runner, "op2", 1)
        entry = json.loads((await env.client.lrange(user_journal_key(env.keys.base, "op2"), 0, 0))[0])
        declared = loop.agents.get("tools").budget.latency_ms
        want = ctl.max_latency_ms(declared, loop.config.node_slack_ms)
        assert [r["budget_ms"] for r in entry["records"] if r["agent"] == "tools"] == [want]
    finally:
        await loop.aclose()


def test_control_snapshot_ignores_what_does_not_parse() -> None:
    snap = ctl.ControlSnapshot.parse({b"a|paused": b'{"paused": true, "by": "x", "at_ms": 5}', b"a|budget": b"nope",
                                      b"b|budget": b'{"budget": {"latency_ms": -1}}', b"junk": b"{}"})
    assert snap.paused() == ["a"] and snap.get("a").budget is None and snap.get("b").budget is None


# --- the API side -------------------------------------------------------------------------------

def make_client(artifacts: Any, ranker: Any, target: Any, keys: Any, *, api_key: str | None = KEY,
                off_loopback: bool = False) -> TestClient:
    funnel = FunnelConfig(max_history=50, request_budget_ms=10_000.0)
    options = ServeOptions(api_key=api_key, require_api_key=off_loopback, funnel=funnel,
                           redis_read_timeout_ms=5000.0)
    app = create_app(Settings(), artifacts, ranker=ranker, options=options, redis_target=target, keys=keys)
    return TestClient(app, raise_server_exceptions=False)


def _daemon_reports(target: Any, keys: Any, agents: dict[str, float]) -> None:
    """What a daemon's journal publishes about its agents (the control route checks names)."""
    client = target.sync_client()
    try:
        client.hset(daemons_key(keys), "host:1", json.dumps({"name": "host:1", "at_ms": now_ms(), "shards": 1,
                                                             "group": "outerloop-daemon", "agents": {
            a: {"budget_ms": b, "max_override_ms": b + 400} for a, b in agents.items()}}))
    finally:
        client.close()


def test_control_needs_the_key_always_and_nothing_changes_without_it(tiny_artifacts, tiny_ranker, redis_target,  # noqa: F811
                                                                     redis_keys) -> None:  # noqa: F811
    _daemon_reports(redis_target, redis_keys, {"tools": 150.0})
    body = {"action": "pause", "operator": "mallory"}
    with make_client(tiny_artifacts, tiny_ranker, redis_target, redis_keys) as c:
        assert c.get("/console").status_code == 200 and "outerloop console" in c.get("/console").text
        assert c.get("/console/static/vendor/uPlot.iife.min.js").status_code == 200
        assert c.get("/console/api/agents").status_code == 200  # reads: no key on loopback
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
            r = c.post("/console/api/control/tools", json=body, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["detail"]
        bad = c.post("/console/api/control/tools", content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 401  # the key is checked before the body is even read
        assert c.post("/console/api/control/tools", content=b"{not json", headers={"X-API-Key": KEY}).status_code == 422
        assert c.get("/console/api/control").json() == {"agents": {}, "log": []}

        h = {"X-API-Key": KEY}
        assert c.post("/console/api/control/nosuch", json=body, headers=h).status_code == 404
        r = c.post("/console/api/control/tools", json={"action": "budget", "operator": "a", "latency_ms": 10_000},
                   headers=h)
        assert r.status_code == 422 and "at most 550 ms" in r.json()["detail"]
        assert c.post("/console/api/control/tools", json={"action": "budget", "operator": "a"},
                      headers=h).status_code == 422
        r = c.post("/console/api/control/tools", json=body, headers=h)
        assert r.status_code == 200 and r.json()["agent"]["paused"] and r.json()["agent"]["paused_by"] == "mallory"
        state = c.get("/console/api/control").json()
        assert state["agents"]["tools"]["paused"] and state["log"][0]["by"] == "mallory"
        assert state["log"][0]["source"] == "testclient"
        shown = {a["name"]: a for a in c.get("/console/api/agents").json()["agents"]}
        assert shown["tools"]["control"]["paused"] and shown["tools"]["declared"]["budget_ms"] == 150.0

    with make_client(tiny_artifacts, tiny_ranker, redis_target, redis_keys, api_key=None) as c:
        r = c.post("/console/api/control/tools", json={"action": "resume", "operator": "a"})
        assert r.status_code == 403 and "OUTERLOOP_API_KEY" in r.json()["detail"]
    with make_client(tiny_artifacts, tiny_ranker, redis_target, redis_keys, off_loopback=True) as c:
        assert c.get("/console/api/health").status_code == 401  # off loopback the views need the key too
        assert c.get("/console/api/health", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/console").status_code == 200  # the page itself holds no data


def test_request_figures_and_the_user_view(tiny_artifacts, tiny_ranker, tiny_data, redis_target, redis_keys) -> None:  # noqa: F811
    items = [int(i) for i in tiny_data.users[1].items[:4]]
    with make_client(tiny_artifacts, tiny_ranker, redis_target, redis_keys) as c:
        post = c.post("/v1/events", json=[event("view-user", i, "finish") for i in items], headers={"X-API-Key": KEY})
        assert post.status_code == 200
        for _ in range(7):
            assert c.get("/v1/users/view-user/recommendations", params={"k": 5}).status_code == 200
        # the middleware instance is built by Starlette: find it on the stack
        mw = c.app.middleware_stack
        while mw is not None and type(mw).__name__ != "RequestStats":
            mw = getattr(mw, "app", None)
        assert mw is not None and mw.total == 7 and mw.degraded_total == 0
        c.portal.call(mw.publish)
        health = c.get("/console/api/health").json()
        assert health["api"]["requests_total"] == 7 and health["api"]["degraded_total"] == 0
        assert health["api"]["p99_ms_60s"] is not None and health["api"]["rate_10s"] > 0

        view = c.get("/console/api/users/view-user").json()
        assert [h["item_id"] for h in view["history"]] == items[::-1]
        assert all(h["type"] == "finish" and h["title"] for h in view["history"])
        assert view["served"]["rows"] and not view["served"]["degraded"]
        item = view["served"]["rows"][0]["items"][0]["item_id"]
        chain = c.get(f"/console/api/users/view-user/items/{item}/chain").json()
        assert chain["links"] and chain["links"][0]["source"] in ("funnel", "cold_start") and "funnel" in chain["links"][0]
        assert c.get("/console/api/users/bad%20id").status_code == 422
