"""Telemetry with the real OpenTelemetry SDK: spans land in its in-memory exporter and the tests
assert the span tree (parents, links, attributes).

Covered: an API request span (real FastAPI app, real middleware), an agent run killed by the
real :class:`~outerloop.budgets.enforce.Enforcer` (``outcome=killed`` on the span), and the
POST -> Redis stream -> daemon cycle path through a real Redis stream entry and the
``traceparent`` field.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry.trace import SpanKind

from outerloop import telemetry
from outerloop.budgets.context import RunContext
from outerloop.budgets.enforce import Enforcer
from outerloop.contracts.budget import Budget
from outerloop.contracts.keys import Keys
from outerloop.errors import UsageError
from tests.redis_fixtures import pytest_generate_tests, redis_client, redis_keys, redis_target  # noqa: F401


@pytest.fixture
def tel() -> telemetry.Telemetry:
    t = telemetry.setup_telemetry("outerloop-test", exporter="memory")
    t.clear()
    return t


def by_name(spans: list[Any], name: str) -> Any:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"expected one span {name!r}, got {[s.name for s in spans]}"
    return found[0]


def sum_points(tel: telemetry.Telemetry, name: str, **attrs: Any) -> float:
    """Counter total, or histogram sample count, over the points matching ``attrs``."""
    pts = tel.metric_points().get(name, [])
    match = [p for p in pts if all(p.attributes.get(k) == v for k, v in attrs.items())]
    return sum(p.value if hasattr(p, "value") else p.count for p in match)


def ancestors(spans: list[Any], span: Any) -> list[int]:
    """Span ids from ``span``'s parent up to its trace's root (within ``spans``)."""
    by_id = {s.context.span_id: s for s in spans}
    out: list[int] = []
    while span.parent is not None:
        out.append(span.parent.span_id)
        span = by_id.get(span.parent.span_id)
        if span is None:
            break
    return out


def make_app(client: Any = None, stream: str = "") -> FastAPI:
    """A small FastAPI app (its native telemetry makes the request spans); POST /v1/events
    XADDs with the ``traceparent`` field, as ``user_state.queue_apply`` does (the real API and
    daemon are traced end to end in ``tests/test_telemetry_wiring.py``)."""
    app = FastAPI()

    @app.get("/v1/users/{user_id}/recommendations")
    async def recs(user_id: str) -> dict[str, Any]:
        with telemetry.span("funnel.recommend", user_id=user_id):
            return {"user_id": user_id, "rows": []}

    @app.post("/v1/events")
    async def events(request: Request) -> dict[str, int]:
        body = await request.json()
        pipe = client.pipeline(transaction=True)
        for ev in body["events"]:
            pipe.xadd(stream, telemetry.inject_trace({b"event": json.dumps(ev).encode()}))
        await pipe.execute()
        return {"accepted": len(body["events"])}

    return app


async def test_api_request_span_names_the_route_and_parents_the_handler(tel: telemetry.Telemetry) -> None:
    app = make_app()
    route = {"http.route": "/v1/users/{user_id}/recommendations"}
    # the meter provider is process-wide (installed once): other modules' API tests add points too
    before = sum_points(tel, telemetry.API_DURATION, **route)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.get("/v1/users/u7/recommendations")
        assert r.status_code == 200
        missing = await http.get("/nope")
        assert missing.status_code == 404
    spans = tel.spans()
    server = by_name(spans, "GET /v1/users/{user_id}/recommendations")
    assert server.kind == SpanKind.SERVER
    assert server.attributes["http.route"] == "/v1/users/{user_id}/recommendations"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["url.path"] == "/v1/users/u7/recommendations"
    inner = by_name(spans, "funnel.recommend")
    assert inner.attributes["user_id"] == "u7"
    assert server.context.span_id in ancestors(spans, inner)
    unmatched = [s for s in spans if s.kind == SpanKind.SERVER and s.attributes.get("http.response.status_code") == 404]
    assert len(unmatched) == 1 and unmatched[0].context.trace_id != server.context.trace_id
    assert sum_points(tel, telemetry.API_DURATION, **route) - before == 1


async def test_api_span_continues_a_callers_traceparent(tel: telemetry.Telemetry) -> None:
    trace_id = uuid.uuid4().hex
    caller = f"00-{trace_id}-{'ab' * 8}-01"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app()), base_url="http://t") as http:
        await http.get("/v1/users/u1/recommendations", headers={"traceparent": caller})
    server = by_name(tel.spans(), "GET /v1/users/{user_id}/recommendations")
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.parent is not None and format(server.parent.span_id, "016x") == "ab" * 8


async def _sleepy_agent(ctx: RunContext) -> str:
    await asyncio.sleep(2.0)
    return "too late"


async def _quick_agent(ctx: RunContext) -> str:
    return "done"


async def test_killed_agent_run_span_has_outcome_budget_and_parent(tel: telemetry.Telemetry) -> None:
    enforcer = Enforcer()  # the enforcer makes the run spans itself
    with telemetry.span("daemon.cycle", user_id="u1") as cycle:
        for fn, budget_ms in ((_sleepy_agent, 30.0), (_quick_agent, 50.0)):
            await enforcer.run(fn, Budget(latency_ms=budget_ms), agent=fn.__name__)
    spans = tel.spans()
    assert len([s for s in spans if s.name == "agent.run"]) == 2
    runs = {s.attributes["agent"]: s for s in spans if s.name == "agent.run"}
    killed, ok = runs["_sleepy_agent"], runs["_quick_agent"]
    for s in (killed, ok):
        assert s.parent is not None and s.parent.span_id == cycle.get_span_context().span_id
    assert killed.attributes["outcome"] == "killed"
    assert killed.attributes["budget_ms"] == 30.0
    assert killed.attributes["elapsed_ms"] >= 30.0
    assert killed.attributes["retries"] == 0
    assert killed.attributes["overrun_ms"] >= 0.0
    assert not killed.status.is_ok
    assert ok.attributes["outcome"] == "ok" and ok.status.is_ok
    assert sum_points(tel, telemetry.AGENT_KILLS, agent="_sleepy_agent") == 1
    assert sum_points(tel, telemetry.AGENT_RUNS, agent="_quick_agent", outcome="ok") == 1


async def test_agent_run_cancelled_with_its_cycle_is_marked_error(tel: telemetry.Telemetry) -> None:
    async def cycle() -> None:
        with telemetry.agent_run_span("memory", 80.0):
            await asyncio.sleep(5)

    task = asyncio.create_task(cycle())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    run = by_name(tel.spans(), "agent.run")
    assert run.attributes["outcome"] == "error"
    assert not run.status.is_ok


async def test_post_to_stream_to_daemon_cycle_is_linked(tel: telemetry.Telemetry, redis_client: Any,
                                                        redis_keys: type[Keys]) -> None:
    stream, group = redis_keys.events_stream, "daemon"
    await redis_client.xgroup_create(stream, group, id="0", mkstream=True)
    event = {"event_id": "e1", "user_id": "u42", "item_id": 7, "type": "play", "ts": 1_700_000_000_000}
    app = make_app(redis_client, stream)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.post("/v1/events", json={"events": [event]})).status_code == 200
    spans = tel.spans()
    post = by_name(spans, "POST /v1/events")
    in_post = {s.context.span_id for s in spans if s.context.trace_id == post.context.trace_id}

    # the daemon's consumer: read the real entry, link the apply span, remember for the user
    reply = await redis_client.xreadgroup(group, "c1", {stream: ">"}, count=10)
    (_, entries), = reply
    (entry_id, fields), = entries
    assert telemetry.traceparent_of(fields) is not None
    links = [ln for ln in (telemetry.link_from_fields(f, entry_id=eid.decode()) for eid, f in entries) if ln]
    trace_key = redis_keys.user("u42", "trace")
    with telemetry.span("daemon.apply", kind=SpanKind.CONSUMER, links=links, entries=len(entries)):
        pipe = redis_client.pipeline(transaction=False)
        telemetry.TraceLinks().remember(pipe, trace_key, [telemetry.traceparent_of(fields)])
        pipe.xack(stream, group, entry_id)
        await pipe.execute()

    # the dispatcher, later and in another task: take the links, run the cycle
    async def run_cycle() -> None:
        cycle_links = await telemetry.TraceLinks().take(redis_client, trace_key)
        with telemetry.span("daemon.cycle", links=cycle_links, user_id="u42"):
            await Enforcer().run(_quick_agent, Budget(latency_ms=150), agent="tools")

    await asyncio.create_task(run_cycle())
    assert await redis_client.exists(trace_key) == 0

    spans = tel.spans()
    apply_span, cycle = by_name(spans, "daemon.apply"), by_name(spans, "daemon.cycle")
    for linked in (apply_span, cycle):  # to the POST's trace: its server span or a span inside it
        assert len(linked.links) == 1
        ctx = linked.links[0].context
        assert ctx.trace_id == post.context.trace_id and ctx.span_id in in_post
    assert apply_span.links[0].attributes["entry_id"] == entry_id.decode()
    assert cycle.links[0].attributes["relation"] == "consumed_event"
    assert cycle.parent is None  # its own trace: one cycle serves many events
    run = by_name(spans, "agent.run")
    assert run.parent.span_id == cycle.context.span_id and run.context.trace_id == cycle.context.trace_id


async def test_trace_links_are_capped_and_bad_traceparents_skipped(redis_client: Any, redis_keys: type[Keys]) -> None:
    key = redis_keys.user("u1", "trace")
    good = [f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01" for _ in range(5)]
    pipe = redis_client.pipeline(transaction=False)
    tl = telemetry.TraceLinks(cap=3)
    tl.remember(pipe, key, good + ["garbage"])
    await pipe.execute()
    links = await tl.take(redis_client, key)
    assert [format(ln.context.trace_id, "032x") for ln in links] == [tp.split("-")[1] for tp in good[-2:]]


def test_inject_adds_nothing_outside_a_span(tel: telemetry.Telemetry) -> None:
    assert telemetry.inject_trace({}) == {}
    with telemetry.span("producer") as s:
        fields = telemetry.inject_trace({"event": "{}"})
    tp = fields[telemetry.TRACEPARENT_FIELD]
    assert tp.split("-")[1] == format(s.get_span_context().trace_id, "032x")
    assert telemetry.context_from_fields({"traceparent": "nonsense"}) is None
    assert telemetry.link_from_fields({b"event": b"{}"}) is None


def test_tool_call_span_and_cache_counter(tel: telemetry.Telemetry) -> None:
    # metrics are process-wide and cumulative (other tests plan, and miss the plan cache): deltas
    errors_before = sum_points(tel, telemetry.TOOL_CALL_DURATION, tool="co_watch", outcome="error")
    misses_before = sum_points(tel, telemetry.CACHE_LOOKUPS, cache="plan", result="miss")
    with pytest.raises(ValueError):
        with telemetry.tool_call_span("co_watch", cached=False):
            raise ValueError("boom")
    with telemetry.tool_call_span("trending", cached=True):
        pass
    telemetry.count_cache("plan", hit=True)
    telemetry.count_cache("plan", hit=False, n=3)
    spans = {s.attributes["tool"]: s for s in tel.spans() if s.name == "tool.call"}
    assert not spans["co_watch"].status.is_ok and spans["trending"].attributes["cached"] is True
    assert sum_points(tel, telemetry.TOOL_CALL_DURATION, tool="co_watch", outcome="error") - errors_before == 1
    assert sum_points(tel, telemetry.CACHE_LOOKUPS, cache="plan", result="miss") - misses_before == 3


def test_setup_rules(tel: telemetry.Telemetry, monkeypatch: pytest.MonkeyPatch) -> None:
    assert telemetry.setup_telemetry("again", exporter="memory") is tel  # same kind: the same one
    with pytest.raises(UsageError, match="already set up"):
        telemetry.setup_telemetry("other", exporter="none")
    with pytest.raises(UsageError, match="unknown telemetry exporter"):
        telemetry.setup_telemetry("x", exporter="zipkin", install=False)  # type: ignore[arg-type]
    monkeypatch.delenv(telemetry.OTLP_ENDPOINT_ENV, raising=False)
    assert telemetry.default_exporter() == "none"
    monkeypatch.setenv(telemetry.OTLP_ENDPOINT_ENV, "http://127.0.0.1:4318")
    assert telemetry.default_exporter() == "otlp"
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="opentelemetry-exporter-otlp-proto-http==1.45.2"):
            telemetry.setup_telemetry("x", install=False)
    else:
        telemetry.setup_telemetry("x", install=False).shutdown()


def test_console_exporter_writes_spans(capsys: pytest.CaptureFixture[str]) -> None:
    console = telemetry.setup_telemetry("console-test", exporter="console", install=False)
    with console.tracer_provider.get_tracer("t").start_as_current_span("hello.console"):
        pass
    console.shutdown()
    assert '"name": "hello.console"' in capsys.readouterr().out
    with pytest.raises(UsageError, match="only exporter='memory'"):
        console.spans()


async def test_cycle_context_reaches_agents_through_langgraph(tel: telemetry.Telemetry, redis_target: Any,
                                                             redis_keys: type[Keys]) -> None:
    """The daemon's cycle span is current when ``run_cycle`` starts; spans made inside an agent
    (run by LangGraph and the enforcer, in tasks of their own) must still be its descendants."""
    from outerloop import OuterLoop, Trigger
    from outerloop.agents.sdk import AgentContext, agent
    from tests.agents.test_outer_loop_support import BASE_TS, TinyArtifacts, ev

    @agent(name="traced", budget=Budget(latency_ms=2000), triggers=("session_closed",), rows=("traced",))
    async def traced(ctx: AgentContext) -> None:
        """Makes one span inside the agent run."""
        with telemetry.span("inside.agent", user_id=ctx.user_id):
            pass

    events = [ev("u-tr", "play", 3, BASE_TS - 60_000), ev("u-tr", "finish", 3, BASE_TS - 30_000)]
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys, agents=[traced],
                         builtins=False) as loop:
        with telemetry.span("daemon.cycle", user_id="u-tr") as cycle:
            res = await loop.run_cycle("u-tr", [Trigger.session_closed(events)], now_ms=BASE_TS)
    assert [r.agent for r in res.records if r.agent == "traced"] == ["traced"]
    spans = tel.spans()
    inside = by_name(spans, "inside.agent")
    assert cycle.get_span_context().span_id in ancestors(spans, inside)
    assert telemetry.enabled()


def test_dead_letters_are_counted_by_kind(tel: telemetry.Telemetry) -> None:
    before = {k: sum_points(tel, telemetry.DEAD_LETTERS, kind=k) for k in ("malformed", "trimmed")}
    telemetry.count_dead_letter("malformed")
    telemetry.count_dead_letter("malformed")
    telemetry.count_dead_letter("trimmed")
    assert sum_points(tel, telemetry.DEAD_LETTERS, kind="malformed") - before["malformed"] == 2
    assert sum_points(tel, telemetry.DEAD_LETTERS, kind="trimmed") - before["trimmed"] == 1
