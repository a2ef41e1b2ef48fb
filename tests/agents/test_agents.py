"""Agents under budgets, through the real graph, Redis and FAISS: kill-no-retry and the last good
row, the tool-call budget, isolated agents in worker processes, and the memory agent (back-off
after three dropped crime dramas; the CAS loser re-reads and re-decides)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from outerloop import AgentContext, Budget, OuterLoop, Trigger, agent
from outerloop.agents.memory_agent import Interaction, derive, facts_of
from outerloop.agents.sdk import IsolatedContext
from outerloop.budgets.fencing import Fence
from outerloop.errors import UsageError
from outerloop.memory.facts import ContinueWatching, GenreAffinity, GenreBackoff
from outerloop.memory.store import MemoryChanges, MemoryStore
from outerloop.tools.builtin import CatalogIndex
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    pytest_generate_tests,
    redis_client,
    redis_keys,
    redis_target,
)
from tests.agents.test_outer_loop_support import BASE_TS, SERIES, TinyArtifacts, apply_events, episode_id, ev, tiny_catalog

IDX = CatalogIndex.build(tiny_catalog())
CRIME_DRAMAS = [1, 11, 21, 31]  # films whose genres are (Crime, Drama)
COMEDIES = [2, 12, 22]
CALLS: dict[str, int] = {}


def count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


@agent(name="good", budget=Budget(latency_ms=200), rows=["picks"])
async def good(ctx: AgentContext) -> str:
    """Writes a row quickly."""
    count("good")
    ctx.emit_row("picks", title="Picks", reason="good run", items=[(1, 1.0), (2, 0.5)])
    return "done"


@agent(name="slow", budget=Budget(latency_ms=60), rows=["picks_slow"])
async def slow(ctx: AgentContext) -> None:
    """Stages a row, then overruns its budget."""
    count("slow")
    ctx.emit_row("picks_slow", title="Picks", reason="slow run", items=[(9, 1.0)])
    await asyncio.sleep(2.0)


@agent(name="chatty", budget=Budget(latency_ms=500, max_tool_calls=2), tools=["item_metadata"], rows=["chatty"])
async def chatty(ctx: AgentContext) -> None:
    """Calls a tool five times with a budget of two."""
    count("chatty")
    for i in range(1, 6):
        await ctx.call_tool("item_metadata", {"item_ids": [i]})
        count("chatty_calls")
    ctx.emit_row("chatty", title="Chatty", reason="never reached", items=[(1, 1.0)])


@agent(name="cpu_fast", budget=Budget(latency_ms=3000), rows=["cpu"], isolated=True)
def cpu_fast(ctx: IsolatedContext) -> int:
    """CPU-bound work in a worker process: scores the history and emits a row."""
    items = [int(i) for i in ctx.payload.items.tolist()]
    ctx.emit_row("cpu", title="CPU", reason="isolated", items=[(i, 1.0) for i in items[:3]])
    return len(items)


@agent(name="cpu_spin", budget=Budget(latency_ms=150), rows=["cpu_spin"], isolated=True)
def cpu_spin(ctx: IsolatedContext) -> None:
    """Never yields: only a process kill can stop it."""
    ctx.emit_row("cpu_spin", title="Spin", reason="never committed", items=[(1, 1.0)])
    x = 0
    while True:
        x += 1


def loop_for(redis_target, redis_keys, *agents, **kw) -> OuterLoop:
    return OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys, agents=agents, builtins=False, **kw)


# -- budgets through the graph ---------------------------------------------------------------------
async def test_overrunning_agent_is_killed_not_retried_and_the_last_good_row_stays(redis_target, redis_keys,
                                                                                    redis_client):
    slow_row = slow.rows[0]
    # the last good version of the row, from an earlier committed run
    await redis_client.hset(redis_keys.rows("u1"), slow_row, b'{"row_id":"picks_slow","title":"old","reason":"",'
                            b'"items":[[5,1.0]],"produced_by":"slow","run_id":"r0","model_version":"tiny-1",'
                            b'"created_at":1,"expires_at":99999999999999}')
    CALLS.clear()
    async with loop_for(redis_target, redis_keys, good, slow) as loop:
        t0 = time.perf_counter()
        res = await loop.run_cycle("u1", [Trigger.manual("slow", "good", at_ms=BASE_TS)], now_ms=BASE_TS)
        took = time.perf_counter() - t0
        rows = await loop.rows("u1")
    assert [r.agent for r in res.records] == ["planner", "slow", "good"]
    rec = res.record("slow")
    assert rec.outcome == "killed" and rec.retries == 0 and rec.writes_committed == 0
    assert 55 <= rec.elapsed_ms < 1000 and took < 1.9  # stopped near its 60 ms deadline, not after 2 s
    assert CALLS["slow"] == 1  # run once, never again
    assert slow_row not in res.rows_committed
    assert rows[slow_row].items == [(5, 1.0)] and rows[slow_row].run_id == "r0"  # the last good row
    # the next agent was not held back by the killed one
    assert res.record("good").outcome == "ok" and rows["picks"].run_id == res.record("good").run_id


async def test_tool_call_budget_stops_the_agent(redis_target, redis_keys):
    CALLS.clear()
    async with loop_for(redis_target, redis_keys, chatty) as loop:
        res = await loop.run_cycle("u1", [Trigger.manual("chatty", at_ms=BASE_TS)], now_ms=BASE_TS)
        rows = await loop.rows("u1")
    rec = res.record("chatty")
    assert rec.outcome == "over_tool_budget" and rec.tool_calls == 2
    assert CALLS["chatty_calls"] == 2 and CALLS["chatty"] == 1
    assert rows == {} and res.rows_committed == {}


async def test_step_budget_from_the_plan_can_only_tighten(redis_target, redis_keys):
    from outerloop.contracts.plans import Plan, PlanStep, StepBudget
    from outerloop.agents.planner import validate_plan

    async with loop_for(redis_target, redis_keys, good) as loop:
        plan = validate_plan(Plan(steps=[PlanStep(agent="good", rows=["picks"], budget=StepBudget(latency_ms=10_000))]),
                             loop.agents)
    assert plan.steps[0].budget.latency_ms == good.budget.latency_ms


async def test_isolated_agents_run_in_worker_processes_and_are_killed_there(redis_target, redis_keys, redis_client):
    await apply_events(redis_client, redis_keys, [ev("u1", "finish", i, BASE_TS + i) for i in (4, 5, 6)])
    async with loop_for(redis_target, redis_keys, cpu_fast, cpu_spin) as loop:
        res = await loop.run_cycle("u1", [Trigger.manual("cpu_fast", "cpu_spin", at_ms=BASE_TS)], now_ms=BASE_TS + 10)
        rows = await loop.rows("u1")
    fast, spin = res.record("cpu_fast"), res.record("cpu_spin")
    assert fast.outcome == "ok" and fast.isolated and fast.worker_pid and fast.value.value == 3
    assert rows["cpu"].item_ids() == [4, 5, 6] and rows["cpu"].produced_by == "cpu_fast"
    assert spin.outcome == "killed" and spin.isolated and spin.retries == 0
    assert "cpu_spin" not in rows


def test_agent_misuse_is_a_usage_error():
    with pytest.raises(UsageError, match="async"):
        agent(name="sync_inline", budget=Budget(latency_ms=10))(lambda ctx: None)
    with pytest.raises(UsageError, match="must match"):
        agent(name="Bad Name", budget=Budget(latency_ms=10))(good.fn)
    with pytest.raises(UsageError, match="reserved"):
        OuterLoop(TinyArtifacts(), agents=[agent(name="queue", budget=Budget(latency_ms=10))(good.fn)], builtins=False)
    with pytest.raises(UsageError, match="not registered"):
        OuterLoop(TinyArtifacts(), builtins=False,
                  agents=[agent(name="x", budget=Budget(latency_ms=10), tools=["nope"])(good.fn)])
    with pytest.raises(UsageError, match="already produced"):
        OuterLoop(TinyArtifacts(), builtins=False,
                  agents=[good, agent(name="y", budget=Budget(latency_ms=10), rows=["picks"])(good.fn)])


async def test_emitting_an_undeclared_row_or_calling_an_undeclared_tool_is_misuse(redis_target, redis_keys):
    @agent(name="rogue", budget=Budget(latency_ms=200), rows=["mine"])
    async def rogue(ctx: AgentContext) -> None:
        """Writes a row it does not own."""
        ctx.emit_row("top_picks", title="x", reason="x", items=[(1, 1.0)])

    @agent(name="sneaky", budget=Budget(latency_ms=200), rows=["mine2"])
    async def sneaky(ctx: AgentContext) -> None:
        """Calls a tool it did not declare."""
        await ctx.call_tool("trending", {})

    async with loop_for(redis_target, redis_keys, rogue, sneaky) as loop:
        res = await loop.run_cycle("u1", [Trigger.manual("rogue", "sneaky", at_ms=BASE_TS)], now_ms=BASE_TS)
        assert await loop.rows("u1") == {}
    assert res.record("rogue").outcome == "error" and "may only emit" in res.record("rogue").error
    assert res.record("sneaky").outcome == "error" and "did not declare" in res.record("sneaky").error


# -- memory agent ------------------------------------------------------------------------------------
def skips(items, t0=BASE_TS):
    return [Interaction(i, kind, t0 + 10 * n + k) for n, i in enumerate(items) for k, kind in enumerate(("play", "skip"))]


def test_three_crime_dramas_dropped_in_a_row_back_the_genre_off():
    facts = facts_of(skips(CRIME_DRAMAS[:3]), IDX, BASE_TS)
    back = facts["genre_backoff:crime"]
    assert isinstance(back, GenreBackoff) and back.genre == "Crime"
    assert back.until.timestamp() * 1000 > BASE_TS + 13 * 86_400_000
    assert "genre_backoff:comedy" not in facts


@pytest.mark.parametrize("sequence", [
    skips(CRIME_DRAMAS[:2]),  # only two
    skips(CRIME_DRAMAS[:2]) + [Interaction(21, "finish", BASE_TS + 100)] + skips([31], BASE_TS + 200),  # broken run
    skips([CRIME_DRAMAS[0], COMEDIES[0], 3]),  # three skips, three genres
])
def test_no_backoff_without_three_in_a_row(sequence):
    assert "genre_backoff:crime" not in facts_of(sequence, IDX, BASE_TS)


def test_a_finish_after_a_backoff_clears_it_and_series_progress_is_tracked():
    seq = skips(CRIME_DRAMAS[:3]) + [Interaction(CRIME_DRAMAS[3], "finish", BASE_TS + 500)]
    derived = derive(seq, IDX, BASE_TS, 0)
    assert "genre_backoff:crime" in derived.clear and "genre_backoff:crime" not in derived.upsert
    cw = facts_of([Interaction(episode_id(1), "finish", BASE_TS), Interaction(episode_id(2), "finish", BASE_TS + 1)],
                  IDX, BASE_TS)[f"continue_watching:{SERIES}"]
    assert isinstance(cw, ContinueWatching) and cw.next_item_id == episode_id(3) and cw.next_episode == 3
    # the next episode is not out yet: nothing to continue
    done = facts_of([Interaction(episode_id(5), "finish", BASE_TS)], IDX, BASE_TS)
    assert f"continue_watching:{SERIES}" not in done


async def test_memory_agent_backs_off_through_the_graph(redis_target, redis_keys, redis_client):
    user = "u-tired"
    events = [e for n, i in enumerate(CRIME_DRAMAS[:3])
              for e in (ev(user, "play", i, BASE_TS + 100 * n), ev(user, "skip", i, BASE_TS + 100 * n + 50))]
    await apply_events(redis_client, redis_keys, events)
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        res = await loop.run_cycle(user, [Trigger.session_closed(events)], now_ms=BASE_TS + 1000)
        mem = await loop.deps.memory.load(user)
    assert res.record("memory").outcome == "ok"
    backoff = {f.genre for f in mem.of_kind(GenreBackoff)}
    assert "Crime" in backoff
    # the evidence is the skips themselves (already in the history the API applied) by event id
    assert mem.get("genre_backoff:crime").evidence == [e.event_id for e in events if e.type == "skip"]
    # rows built later in the same cycle already leave the backed-off genre out
    top = res.rows_committed["top_picks"]
    assert all("Crime" not in IDX.item(i).genres for i in top.item_ids())


async def test_continue_watching_leaves_out_a_series_of_a_backed_off_genre(redis_target, redis_keys, redis_client):
    user = "u-tired-of-crime"
    events = [ev(user, "play", episode_id(1), BASE_TS), ev(user, "finish", episode_id(1), BASE_TS + 60_000)]
    events += [e for n, i in enumerate(CRIME_DRAMAS[:3]) for e in (
        ev(user, "play", i, BASE_TS + 100_000 * (n + 1)), ev(user, "skip", i, BASE_TS + 100_000 * (n + 1) + 50))]
    await apply_events(redis_client, redis_keys, events)
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        res = await loop.run_cycle(user, [Trigger.session_closed(events)], now_ms=BASE_TS + 1_000_000)
        mem = await loop.deps.memory.load(user)
    assert mem.get("genre_backoff:crime") is not None
    assert ("tools", ["continue_watching"]) in [(s.agent, s.rows) for s in res.plan.steps]
    assert res.record("tools").outcome == "ok"
    assert "continue_watching" not in res.rows_committed  # Night Shift is a crime drama


class RacingFence(Fence):
    """Another writer commits to the user's memory just before the run's first commit (a lost race)."""

    raced = False

    async def commit(self, user_id, token, writes, **kwargs):  # noqa: ANN001, ANN003, ANN201
        if not self.raced:
            self.raced = True
            store = MemoryStore(self.redis, keys=self.keys)
            other = GenreAffinity(genre="Documentary", score=0.9, evidence="other agent", confidence=0.5, source="other")
            await store.commit(user_id, await store.version(user_id), MemoryChanges(upsert=(other,)))
        return await super().commit(user_id, token, writes, **kwargs)


async def test_memory_agent_loses_the_race_rereads_and_redecides(redis_target, redis_keys, redis_client):
    user = "u-race"
    events = [e for n, i in enumerate(CRIME_DRAMAS[:3])
              for e in (ev(user, "play", i, BASE_TS + 100 * n), ev(user, "skip", i, BASE_TS + 100 * n + 50))]
    await apply_events(redis_client, redis_keys, events)
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        loop.deps.enforcer.fence = RacingFence(loop.deps.redis, keys=redis_keys)
        res = await loop.run_cycle(user, [Trigger.event(e) for e in events], now_ms=BASE_TS + 1000)
        mem = await MemoryStore(redis_client, keys=redis_keys).load(user)
    report = res.record("memory").value.value
    assert res.record("memory").outcome == "ok"
    assert report.attempts == 2 and report.changed
    assert mem.get("genre_affinity:documentary").source == "other"  # the winner's write survives
    assert mem.get("genre_backoff:crime") is not None  # and the loser's decision, made again, too
    assert mem.version == 2


def test_history_embedding_is_finite():
    art = TinyArtifacts()
    assert np.isfinite(art.encode([[1, 2, 3]])).all()


async def test_a_new_backoff_rebuilds_the_users_older_rows_in_the_same_cycle(redis_target, redis_keys, redis_client):
    """Rows built before a back-off may hold the genre: the memory agent raises a ``backoff``
    trigger, the planner replans, and the tool agent rebuilds the user's other rows (here a
    wind-down row full of crime) in the same cycle; a back-off already known raises nothing."""
    from outerloop.contracts.rows import Row

    user = "u-rows-before"
    old = Row(row_id="wind_down", title="Wind down", reason="earlier", items=[(i, 1.0) for i in CRIME_DRAMAS[3:]],
              produced_by="tools", run_id="r-old", model_version="m", created_at=BASE_TS - 10,
              expires_at=BASE_TS + 10**9)
    await redis_client.hset(redis_keys.rows(user), "wind_down", old.model_dump_json())
    events = [e for n, i in enumerate(CRIME_DRAMAS[:3])
              for e in (ev(user, "play", i, BASE_TS + 100 * n), ev(user, "skip", i, BASE_TS + 100 * n + 50))]
    await apply_events(redis_client, redis_keys, events)
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        res = await loop.run_cycle(user, [Trigger.session_closed(events)], now_ms=BASE_TS + 1000)
        again = await loop.run_cycle(user, [Trigger.session_closed(events)], now_ms=BASE_TS + 2000)
    assert [(s.agent, s.rows) for p in res.plans for s in p.steps][-1] == ("tools", ["wind_down"])
    assert "backed off" in res.plans[-1].steps[-1].reason
    rebuilt = res.rows_committed["wind_down"]
    assert rebuilt.run_id != "r-old" and all("Crime" not in IDX.item(i).genres for i in rebuilt.item_ids())
    assert len(again.plans) == 1  # the back-off is known now: no replan
