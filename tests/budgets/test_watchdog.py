"""Event-loop protection, through the real graph and Redis: an ``async def`` agent that burns a
second of CPU without awaiting (budget 100 ms) is noticed by the watchdog; its first run is
recorded as killed (``blocked_event_loop``) with its real overrun, nothing it staged is committed,
a warning names it and the fix; from its second run on it runs in a worker process, SIGKILLed at
the deadline, and another user's cycle does not wait for it. With ``on_blocking="disable"`` it
is not run again. (Bounds are generous: they tell "killed at the deadline" from "ran a second".)"""

from __future__ import annotations

import asyncio
import logging
import time

from outerloop import AgentContext, Budget, LoopConfig, OuterLoop, Trigger, agent
from tests.agents.test_outer_loop_support import TinyArtifacts

BURN_S = 1.0


@agent(name="naive", budget=Budget(latency_ms=100), rows=["naive"], triggers=("manual",))
async def naive(ctx: AgentContext) -> str:
    """Stages a row, then does a second of CPU work without awaiting (the common mistake)."""
    ctx.emit_row("naive", title="Naive", reason="burned the loop", items=[(1, 1.0)])
    end = time.perf_counter() + BURN_S
    x = 0
    while time.perf_counter() < end:
        x = (x * 31 + 7) % 1_000_003
    return "done"


@agent(name="polite", budget=Budget(latency_ms=300), rows=["polite"], triggers=("manual",))
async def polite(ctx: AgentContext) -> str:
    """Awaits, and writes a row."""
    await asyncio.sleep(0.005)
    ctx.emit_row("polite", title="Polite", reason="awaited", items=[(2, 1.0)])
    return "done"


async def test_a_blocking_agent_is_killed_once_then_isolated(redis_target, redis_keys, redis_client, caplog):
    caplog.set_level(logging.WARNING)
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys, agents=[naive, polite],
                         builtins=False) as loop:
        first = (await loop.run_cycle("u-a", [Trigger.manual("naive")])).record("naive")
        assert first.outcome == "killed" and first.error.startswith("blocked_event_loop"), first
        assert not first.isolated and first.overrun_ms > 0.5 * BURN_S * 1000  # reported as it was: it ran on
        assert await redis_client.hgetall(redis_keys.rows("u-a")) == {}  # its staged row was dropped
        warned = [r.getMessage() for r in caplog.records if "'naive'" in r.getMessage()]
        assert warned and any("isolated=True" in m for m in warned), warned
        assert loop.deps.enforcer.demoted("naive") == "isolate"

        await loop.deps.enforcer.pool_ready()
        t0 = time.monotonic()
        second, other = await asyncio.gather(
            loop.run_cycle("u-a", [Trigger.manual("naive")]),
            _after(0.02, loop.run_cycle("u-b", [Trigger.manual("polite")])))
        rec = second.record("naive")
        assert rec.outcome == "killed" and rec.isolated and rec.worker_pid is not None, rec
        assert rec.overrun_ms < 300  # SIGKILLed at its deadline, not a second later
        assert other.record("polite").outcome == "ok"
        assert other.elapsed_ms < 500, other.elapsed_ms  # the other user's cycle did not wait on it
        assert time.monotonic() - t0 < 0.8 * BURN_S
        assert await redis_client.hgetall(redis_keys.rows("u-a")) == {}
        assert "polite" in {k.decode() for k in await redis_client.hgetall(redis_keys.rows("u-b"))}


async def test_a_blocking_agent_can_be_disabled_instead(redis_target, redis_keys):
    config = LoopConfig(on_blocking="disable")
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys, agents=[naive], builtins=False,
                         config=config) as loop:
        first = (await loop.run_cycle("u-c", [Trigger.manual("naive")])).record("naive")
        assert first.outcome == "killed" and first.error.startswith("blocked_event_loop")
        t0 = time.monotonic()
        again = (await loop.run_cycle("u-c", [Trigger.manual("naive")])).record("naive")
        assert again.outcome == "error" and again.error.startswith("disabled") and again.elapsed_ms == 0
        assert time.monotonic() - t0 < 0.5 * BURN_S


async def _after(delay_s: float, aw):  # noqa: ANN001, ANN202
    await asyncio.sleep(delay_s)
    return await aw


def test_a_slice_stretched_by_preemption_is_not_an_offence():
    from outerloop.budgets.watchdog import blocked

    grace = 0.020
    assert not blocked(0.060, 0.002, grace)  # 60 ms of wall, 2 ms of CPU: the process was preempted
    assert blocked(0.060, 0.045, grace)  # CPU work past the deadline
    assert blocked(0.300, 0.001, grace)  # a blocking call (time.sleep, sync I/O) of ten graces
    assert blocked(0.060, None, grace)  # no per-thread CPU clock: wall time decides
    # an ordinary 25 ms step that began 10 ms before the deadline did at most 15 ms of CPU past it
    assert not blocked(0.030, 0.025, grace, before_deadline_s=0.010)
    assert blocked(1.0, 0.98, grace, before_deadline_s=0.100)  # a 1 s busy loop under a 100 ms budget


def test_a_garbage_collection_in_a_slice_is_not_the_agents_cpu():
    """A full collection lands in whatever code allocated when it began; the watchdog counts a
    slice's CPU without it (``GC_CLOCK`` records the collector's time per thread)."""
    import gc
    import threading

    from outerloop.budgets.watchdog import GC_CLOCK, LoopWatchdog

    LoopWatchdog()  # installs the clock
    tid = threading.get_ident()
    junk = [[i] for i in range(300_000)]  # many tracked objects: a full collection has work to do
    before = GC_CLOCK.spent(tid)
    gc.collect()
    assert GC_CLOCK.spent(tid) > before
    del junk
