"""Tool contracts, the registry (validation, budget, timeout, shared cache) and the built-in
tools against a real FAISS index and a real Redis (co-watch graph, trending)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from pydantic import BaseModel

from outerloop.budgets import Budget, RunContext, ToolCallBudgetExceeded
from outerloop.errors import UsageError
from outerloop.tools import ScoredItems, ToolDeps, ToolRegistry, ToolTimeout, tool
from outerloop.tools.builtin import CoWatchGraph, TrendingCounter, default_registry
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    pytest_generate_tests,
    redis_client,
    redis_keys,
    redis_target,
)
from tests.agents.test_outer_loop_support import BASE_TS, SERIES, TinyArtifacts, episode_id, ev


class EchoIn(BaseModel):
    text: str
    delay_ms: float = 0.0


class EchoOut(BaseModel):
    text: str


@tool(name="echo", timeout_ms=50)
async def echo(args: EchoIn, deps: ToolDeps) -> EchoOut:
    """Say it back (after an optional delay)."""
    await asyncio.sleep(args.delay_ms / 1000)
    return EchoOut(text=args.text)


def run_ctx(max_tool_calls: int | None = None, latency_ms: float = 1000) -> RunContext:
    return RunContext(run_id="r1", agent="test", budget=Budget(latency_ms, max_tool_calls), started_at=time.monotonic())


@pytest.fixture
def art() -> TinyArtifacts:
    return TinyArtifacts()


@pytest.fixture
def deps(redis_client, art) -> ToolDeps:
    return ToolDeps(redis=redis_client, artifacts=art, clock_ms=lambda: BASE_TS)


# -- contracts ---------------------------------------------------------------------------------
def test_tool_decorator_takes_types_and_docstring_and_registry_describes_them():
    reg = ToolRegistry([echo])
    (d,) = reg.describe()
    assert d["name"] == "echo" and d["description"].startswith("Say it back")
    assert d["input_schema"]["properties"]["text"]["type"] == "string"
    assert d["output_schema"]["required"] == ["text"]
    assert d["timeout_ms"] == 50


def test_tool_misuse_is_a_usage_error():
    with pytest.raises(UsageError, match="docstring"):
        @tool(name="nodoc")
        async def nodoc(args: EchoIn, deps: ToolDeps) -> EchoOut:
            return EchoOut(text="")

    with pytest.raises(UsageError, match="pydantic model"):
        @tool(name="untyped")
        async def untyped(args, deps: ToolDeps) -> EchoOut:  # noqa: ANN001
            """No input model."""
            return EchoOut(text="")

    with pytest.raises(UsageError, match="async"):
        @tool(name="sync_tool")
        def sync_tool(args: EchoIn, deps: ToolDeps) -> EchoOut:
            """Not async."""
            return EchoOut(text="")

    with pytest.raises(UsageError, match="already registered"):
        ToolRegistry([echo, echo])


async def test_registry_validates_input_counts_calls_and_times_out(deps):
    reg = ToolRegistry([echo])
    with pytest.raises(UsageError, match="invalid input"):
        await reg.call("echo", {"txt": "typo"}, deps)
    with pytest.raises(UsageError, match="no tool named"):
        await reg.call("nope", {}, deps)

    ctx = run_ctx(max_tool_calls=2)
    assert (await reg.call("echo", {"text": "a"}, deps, budget=ctx)).text == "a"
    assert (await reg.call("echo", EchoIn(text="b"), deps, budget=ctx)).text == "b"
    with pytest.raises(ToolCallBudgetExceeded):  # the third call never runs
        await reg.call("echo", {"text": "c"}, deps, budget=ctx)
    assert ctx.tool_calls == 2

    t0 = time.perf_counter()
    with pytest.raises(ToolTimeout):
        await reg.call("echo", {"text": "slow", "delay_ms": 3_000}, deps)
    assert time.perf_counter() - t0 < 1.5  # stopped at its own 50 ms timeout, not after 3 s


async def test_tool_timeout_is_capped_by_the_agents_remaining_time(deps):
    slow = tool(name="slow_echo", timeout_ms=5_000)(echo.fn)
    reg = ToolRegistry([slow])
    ctx = run_ctx(latency_ms=60)
    t0 = time.perf_counter()
    with pytest.raises(ToolTimeout):
        await reg.call("slow_echo", {"text": "x", "delay_ms": 3_000}, deps, budget=ctx)
    assert time.perf_counter() - t0 < 1.5  # the agent's 60 ms, not the tool's 5 s


# -- built-in tools ------------------------------------------------------------------------------
async def test_vector_search_matches_brute_force_over_the_faiss_index(deps, art):
    reg = default_registry()
    q = art.item_vectors[5] + art.item_vectors[9]
    out = await reg.call("vector_search", {"vector": q.tolist(), "k": 10, "exclude": [5]}, deps)
    assert isinstance(out, ScoredItems) and len(out.items) == 10
    brute = np.argsort(-(art.item_vectors[1:] @ q))[:11] + 1
    assert out.ids() == [i for i in brute.tolist() if i != 5][:10]


async def test_metadata_next_episodes_and_embedding(deps, art):
    reg = default_registry()
    meta = await reg.call("item_metadata", {"item_ids": [1, episode_id(2), 9999]}, deps)
    assert [m.item_id for m in meta.items] == [1, episode_id(2)]
    assert meta.items[1].series_id == SERIES and meta.items[1].episode == 2
    nxt = await reg.call("next_episodes", {"series_id": SERIES, "after_item_id": episode_id(2), "k": 2}, deps)
    assert [m.item_id for m in nxt.items] == [episode_id(3), episode_id(4)]
    emb = await reg.call("embed_history", {"items": [1, 2, 3]}, deps)
    np.testing.assert_allclose(emb.vector, art.item_vectors[[1, 2, 3]].mean(axis=0), rtol=1e-5)
    assert emb.model_version == "tiny-1"


async def test_co_watch_joins_devices_and_households_and_is_idempotent(redis_client, redis_keys, deps):
    graph = CoWatchGraph(keys=redis_keys)
    reg = default_registry(co_watch_graph=graph)
    events = [
        ev("alice", "finish", 1, BASE_TS, device="phone"),
        ev("alice", "finish", 2, BASE_TS + 1000, device="tv-1"),  # same member, another device
        ev("bob", "play", 3, BASE_TS + 2000, device="tv-1"),  # another member, same TV
        ev("carol", "finish", 4, BASE_TS + 3000, device="tablet"),  # unrelated
    ]
    assert await graph.apply(redis_client, events) == 4
    assert await graph.apply(redis_client, events) == 0  # redelivery changes nothing
    out = await reg.call("co_watch", {"items": [1]}, deps)
    assert out.ids() == [2]  # the cross-device journey joined up
    out = await reg.call("co_watch", {"items": [2]}, deps)
    scores = {it.item_id: it.score for it in out.items}
    assert set(scores) == {1, 3} and scores[1] > scores[3]  # user edge beats a household edge
    assert 4 not in (await reg.call("co_watch", {"items": [3]}, deps)).ids()


async def test_trending_decays_and_rebase_keeps_scores(redis_client, redis_keys, deps, art):
    counter = TrendingCounter(half_life_ms=3_600_000, keys=redis_keys)
    hour = 3_600_000
    old = [ev(f"u{i}", "finish", 1, BASE_TS) for i in range(4)]  # 4 finishes, 5 hours ago
    new = [ev("v0", "finish", 2, BASE_TS + 5 * hour)]  # 1 finish now
    await counter.record(redis_client, old + new, art.catalog)
    top = await counter.top(redis_client, 5, BASE_TS + 5 * hour)
    assert [i for i, _ in top] == [2, 1]  # 4 * 2**-5 = 0.125 < 1
    assert top[1][1] == pytest.approx(4 * 2 ** -5)
    by_genre = await counter.top(redis_client, 5, BASE_TS + 5 * hour, genre="Drama")
    assert [i for i, _ in by_genre] == [1]  # film 1 is a crime drama, film 2 a comedy
    await counter.rebase(redis_client, BASE_TS + 5 * hour, art.catalog)
    again = await counter.top(redis_client, 5, BASE_TS + 5 * hour)
    assert [i for i, _ in again] == [2, 1]
    assert again[1][1] == pytest.approx(top[1][1])


async def test_shared_cache_reuses_cluster_answers_and_global_answers(deps, art):
    reg = default_registry()
    rep = art.item_vectors[10].tolist()
    a = await reg.call("vector_search", {"vector": rep, "k": 20}, deps, share_key="c1")
    b = await reg.call("vector_search", {"vector": art.item_vectors[11].tolist(), "k": 20}, deps, share_key="c1")
    assert b is a  # same cluster: the first user's call served the second
    c = await reg.call("vector_search", {"vector": rep, "k": 20}, deps, share_key="c2")
    assert c is not a
    assert reg.cache.hit_rate("vector_search") == pytest.approx(1 / 3)
    # personal tools are never cached, even with a key
    e1 = await reg.call("embed_history", {"items": [1]}, deps, share_key="c1")
    e2 = await reg.call("embed_history", {"items": [1]}, deps, share_key="c1")
    assert e1 is not e2


async def test_ingesting_the_same_events_twice_counts_them_once(redis_target, redis_keys, redis_client):
    from outerloop import OuterLoop

    events = [ev("u1", "finish", 1, BASE_TS, device="tv"), ev("u1", "finish", 2, BASE_TS + 1, device="tv"),
              ev("u1", "impression", 3, BASE_TS + 2)]
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        assert await loop.ingest(events) == 2  # the impression is not engagement
        assert await loop.ingest(events) == 0
        top = await loop.trending.top(redis_client, 5, BASE_TS + 1)
    assert [i for i, _ in top] == [2, 1] and top[0][1] == pytest.approx(1.0, rel=1e-3)
