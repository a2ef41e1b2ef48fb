"""Telemetry wired through the real parts, asserted on the SDK's in-memory exporter.

One event followed from ``POST /v1/events`` (the real app on tiny trained artifacts) through the
Redis stream (its ``traceparent`` field) to the daemon's consumer span and cycle span (links to
the POST's trace) and the agent runs, tool calls and fenced commit under the cycle (children).
Also: a killed run's span, dead letters and cache lookups in the metrics, and the entry points'
``--telemetry`` flag. Helpers and fixtures come from ``tests/test_telemetry.py`` and the API and
scheduler test modules; nothing here stands in for a real part.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from opentelemetry.trace import SpanKind

from outerloop import AgentContext, Budget, OuterLoop, agent, telemetry
from outerloop.budgets.context import RunContext
from outerloop.budgets.enforce import Enforcer
from outerloop.budgets.fencing import Fence
from outerloop.cli import build_parser
from outerloop.contracts.triggers import TriggerRules
from outerloop.errors import UserInputError
from outerloop.scheduler.runners import OuterLoopRunner, RowRefreshRunner
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from tests.api.test_api import KEY, make_client
from tests.api.test_api_fixtures import event, tiny_artifacts, tiny_dir, tiny_ranker  # noqa: F401
from tests.scheduler.test_scheduler_helpers import (  # noqa: F401
    Env, env, fast_settings, group_done, make_daemon, running, wait_until,
)
from tests.test_telemetry import sum_points, tel  # noqa: F401

ROW = "fresh"


@agent(name="traced_refresh", budget=Budget(latency_ms=5000, max_tool_calls=4), tools=("trending",),
       triggers=("event",), rows=(ROW,))
async def traced_refresh(ctx: AgentContext) -> None:
    """Refreshes one row from the user's history; asks ``trending`` twice (the second answer
    comes from the shared tool cache)."""
    for _ in range(2):
        await ctx.call_tool("trending", {"k": 5})
    items = list(dict.fromkeys(int(i) for i in reversed(ctx.history.items.tolist())))
    ctx.emit_row(ROW, title="Fresh", reason="refreshed on new events", items=[(i, 1.0) for i in items])


def children(spans: list[Any], parent: Any, name: str) -> list[Any]:
    return [s for s in spans if s.name == name and s.parent is not None
            and s.parent.span_id == parent.context.span_id]


async def test_a_posted_event_is_followed_to_the_refreshed_row(tel: telemetry.Telemetry, env: Env,  # noqa: F811
                                                              tiny_artifacts, tiny_ranker) -> None:  # noqa: F811
    user = f"u-trace-{uuid.uuid4().hex[:6]}"
    caller_trace = uuid.uuid4().hex
    caller = f"00-{caller_trace}-{'cd' * 8}-01"
    hits_before = sum_points(tel, telemetry.CACHE_LOOKUPS, cache="tool", result="hit")
    encoder_hits_before = sum_points(tel, telemetry.CACHE_LOOKUPS, cache="encoder", result="hit")

    # 1. the real API: FastAPI's own SERVER span continues the caller's trace
    with make_client(tiny_artifacts, tiny_ranker, env.target, env.keys.base) as http:
        body = {"events": [event(user, 3, "play"), event(user, 5, "finish")]}
        r = http.post("/v1/events", json=body, headers={"X-API-Key": KEY, "traceparent": caller})
        assert r.status_code == 200, r.text
        for _ in range(2):  # the second request finds the user vector in the process cache
            assert http.get(f"/v1/users/{user}/recommendations").status_code == 200
    spans = tel.spans()
    [post] = [s for s in spans if s.kind == SpanKind.SERVER and s.attributes.get("http.route") == "/v1/events"]
    assert post.name == "POST /v1/events" and post.attributes["http.response.status_code"] == 200
    assert format(post.context.trace_id, "032x") == caller_trace
    assert post.parent is not None and format(post.parent.span_id, "016x") == "cd" * 8
    in_post = {s.context.span_id for s in spans if s.context.trace_id == post.context.trace_id}
    assert sum_points(tel, telemetry.CACHE_LOOKUPS, cache="encoder", result="hit") - encoder_hits_before >= 1

    # 2. the stream entries carry the request's trace context
    entries = await env.client.xrange(env.keys.stream())
    assert len(entries) == 2
    for _, fields in entries:
        tp = telemetry.traceparent_of(fields)
        assert tp is not None and tp.split("-")[1] == caller_trace and int(tp.split("-")[2], 16) in in_post

    # 3. the daemon consumes them and runs a cycle of the real outer loop with a custom agent
    tel.clear()
    loop = OuterLoop(tiny_artifacts, redis=env.client, keys=env.keys.base, agents=[traced_refresh], builtins=False)
    loop.planner.rule_budget = Budget(latency_ms=5000, max_tool_calls=0, max_llm_tokens=0)  # a busy machine
    daemon = make_daemon(env, OuterLoopRunner(loop, env.client, env.keys), rules=TriggerRules(on_activity=True),
                         settings=fast_settings(cycle_timeout_s=30, lock_ttl_s=10))
    try:
        async with running(daemon):
            await wait_until(lambda: env.client.hexists(env.keys.rows(user), ROW), timeout_s=30)
    finally:
        await loop.aclose()  # (the daemon stopped gracefully: every cycle span has ended)
    spans = tel.spans()

    applies = [s for s in spans if s.name == "daemon.apply" and s.links]
    assert applies and all(s.kind == SpanKind.CONSUMER for s in applies)
    apply_links = [ln for s in applies for ln in s.links]
    assert {ln.context.trace_id for ln in apply_links} == {post.context.trace_id}
    assert {ln.attributes["entry_id"] for ln in apply_links} == {i.decode() for i, _ in entries}

    cycles = [s for s in spans if s.name == "daemon.cycle" and s.attributes["user_id"] == user]
    linked = [c for c in cycles if c.links]
    assert len(linked) == 1, "the first cycle takes the links; a later one has none left"
    cycle = linked[0]
    assert cycle.parent is None  # its own trace: a cycle serves many events
    assert {ln.context.trace_id for ln in cycle.links} == {post.context.trace_id}
    assert all(ln.context.span_id in in_post and ln.attributes["relation"] == "consumed_event" for ln in cycle.links)
    assert cycle.attributes["status"] == "ok" and "activity" in cycle.attributes["triggers"]

    # agent runs are the cycle's children, with the budget and how they ended
    runs = {s.attributes["agent"]: s for s in spans if s.name == "agent.run"
            and s.context.trace_id == cycle.context.trace_id}
    assert set(runs) >= {"planner", "traced_refresh"}
    for run in runs.values():
        assert run.parent.span_id == cycle.context.span_id
        assert run.attributes["outcome"] == "ok" and run.attributes["overrun_ms"] == 0.0
        assert run.attributes["elapsed_ms"] > 0.0 and run.attributes["retries"] == 0
    refresh = runs["traced_refresh"]
    assert refresh.attributes["budget_ms"] == 5000.0 and refresh.attributes["user_id"] == user
    assert refresh.attributes["tool_calls"] == 2 and refresh.attributes["writes_committed"] == 1

    # tool calls and the row's fenced commit are the run's children; the cache hit is counted
    tools = children(spans, refresh, "tool.call")
    assert [(t.attributes["tool"], t.attributes["cached"]) for t in tools] == [("trending", False), ("trending", True)]
    [commit] = children(spans, refresh, "agent.commit")
    assert commit.attributes["staged"] == 1 and commit.status.is_ok
    cached_calls = [s for s in spans if s.name == "tool.call" and s.attributes.get("cached") is True]
    assert sum_points(tel, telemetry.CACHE_LOOKUPS, cache="tool", result="hit") - hits_before == len(cached_calls)
    assert sum_points(tel, telemetry.CYCLE_DURATION, status="ok") >= 1


async def _fail(ctx: RunContext) -> None:
    raise RuntimeError("boom")


async def test_killed_and_failed_runs_are_spans_with_outcome(tel: telemetry.Telemetry, env: Env) -> None:  # noqa: F811
    async def stage_then_sleep(ctx: RunContext) -> None:
        ctx.stage(env.keys.user("u-kill", "probe"), b"late")
        await asyncio.sleep(2.0)

    kills_before = sum_points(tel, telemetry.AGENT_KILLS, agent="wiring_sleeper")
    enforcer = Enforcer(fence=Fence(env.client, keys=env.keys.base))
    killed = await enforcer.run(stage_then_sleep, Budget(latency_ms=40), agent="wiring_sleeper", user_id="u-kill")
    failed = await enforcer.run(_fail, Budget(latency_ms=500), agent="wiring_failer")
    assert killed.outcome == "killed" and failed.outcome == "error"
    runs = {s.attributes["agent"]: s for s in tel.spans() if s.name == "agent.run"}
    k, f = runs["wiring_sleeper"], runs["wiring_failer"]
    assert k.attributes["outcome"] == "killed" and k.attributes["budget_ms"] == 40.0
    assert k.attributes["overrun_ms"] == pytest.approx(killed.overrun_ms, abs=1e-3) and k.attributes["overrun_ms"] >= 0
    assert k.attributes["elapsed_ms"] >= 40.0 and k.attributes["writes_committed"] == 0 and not k.status.is_ok
    assert not children(tel.spans(), k, "agent.commit")  # a killed run commits nothing
    assert await env.client.exists(env.keys.user("u-kill", "probe")) == 0
    assert f.attributes["outcome"] == "error" and "boom" in f.status.description
    assert sum_points(tel, telemetry.AGENT_KILLS, agent="wiring_sleeper") - kills_before == 1
    assert sum_points(tel, telemetry.AGENT_RUNS, agent="wiring_failer", outcome="error") >= 1


async def test_dead_letters_are_counted_and_apply_spans_made(tel: telemetry.Telemetry, env: Env) -> None:  # noqa: F811
    before = sum_points(tel, telemetry.DEAD_LETTERS, kind="malformed")
    await env.client.xadd(env.keys.stream(), {"event": "{not json"})
    daemon = make_daemon(env, RowRefreshRunner(env.client, keys=env.keys.base))
    async with running(daemon):
        await wait_until(lambda: group_done(env.client, env.keys, 1))
    assert sum_points(tel, telemetry.DEAD_LETTERS, kind="malformed") - before == 1
    [apply] = [s for s in tel.spans() if s.name == "daemon.apply"]
    assert apply.attributes["entries"] == 1 and apply.attributes["acked"] == 1 and not apply.links


@pytest.mark.parametrize("command", ["serve", "daemon", "mcp"])
def test_entry_points_take_a_telemetry_flag(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser([command]).parse_args([command, "--telemetry", "console"]).telemetry == "console"
    assert build_parser([command]).parse_args([command]).telemetry is None  # decided when the command runs
    with pytest.raises(SystemExit) as exc:
        build_parser([command]).parse_args([command, "--telemetry", "zipkin"])
    assert exc.value.code == 2
    assert "--telemetry: invalid choice: 'zipkin'" in capsys.readouterr().err


def test_cli_setup_none_installs_nothing_and_errors_are_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(telemetry.OTLP_ENDPOINT_ENV, raising=False)
    assert telemetry.setup_for_cli("outerloop-api", None) is None  # default without an endpoint: none
    assert telemetry.setup_for_cli("outerloop-api", "none") is None
    telemetry.setup_telemetry("outerloop-test", exporter="memory")  # this process's providers
    with pytest.raises(UserInputError, match="--telemetry otlp: "):  # missing package, or already set up
        telemetry.setup_for_cli("outerloop-daemon", "otlp")
