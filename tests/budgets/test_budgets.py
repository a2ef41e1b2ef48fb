"""Budget enforcement without Redis: deadlines, cancellation, process kills, counters.

Isolated agents live at module level so that worker processes can import them by name.
Timing bounds here are loose on purpose (shared CI cores); the bench measures the real numbers.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from outerloop.budgets import (
    Budget,
    DeadlineExceeded,
    Enforcer,
    RunContext,
    ToolCallBudgetExceeded,
    WorkerPool,
    run_with_budget,
)
from outerloop.errors import UsageError

SLACK_MS = 50.0  # generous: correctness, not speed (see bench/budgets.py for the numbers)


# -- isolated agents (imported by worker processes) ----------------------------------------------
def spin(ctx: RunContext) -> None:
    while True:
        pass


def whoami(ctx: RunContext) -> int:
    return os.getpid()


def chatty(ctx: RunContext) -> None:
    for _ in range(100):
        ctx.count_tool_call()


def crash(ctx: RunContext) -> None:
    raise KeyError("no such item")


def die(ctx: RunContext) -> None:
    os._exit(3)


@pytest.fixture
async def pool():
    async with WorkerPool(size=2, preload=["tests.budgets.test_budgets"]) as p:
        yield p


async def _wait_dead(pid: int, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.01)
    return False


# -- Budget --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"latency_ms": 0}, {"latency_ms": -5}, {"latency_ms": float("inf")}, {"latency_ms": True},
    {"latency_ms": 10, "max_tool_calls": -1}, {"latency_ms": 10, "max_llm_tokens": 1.5},
])
def test_budget_rejects_nonsense(kwargs):
    with pytest.raises(UsageError):
        Budget(**kwargs)


def test_budget_is_frozen():
    b = Budget(100, max_tool_calls=2)
    with pytest.raises(AttributeError):
        b.latency_ms = 5  # type: ignore[misc]


# -- in-process agents ---------------------------------------------------------------------------
async def test_async_sleeper_is_killed_at_deadline_once_never_retried():
    calls = []

    async def sleeper(ctx: RunContext) -> None:
        calls.append(ctx.run_id)
        await asyncio.sleep(10)

    t0 = time.monotonic()
    rec = await run_with_budget(sleeper, Budget(latency_ms=30))
    wall_ms = (time.monotonic() - t0) * 1000
    assert rec.outcome == "killed"
    assert rec.retries == 0 and len(calls) == 1
    assert 0.0 <= rec.overrun_ms < SLACK_MS
    assert 30 <= rec.elapsed_ms < 30 + SLACK_MS
    assert wall_ms < 30 + SLACK_MS + 50
    assert rec.stopped and "DeadlineExceeded" in (rec.error or "")


async def test_ok_run_returns_value_and_no_overrun():
    async def quick(ctx: RunContext, x: int) -> int:
        await asyncio.sleep(0)
        assert ctx.remaining_ms() > 0
        return x * 2

    rec = await run_with_budget(quick, Budget(1000), 21)
    assert (rec.outcome, rec.value, rec.overrun_ms, rec.error) == ("ok", 42, 0.0, None)


async def test_failing_agent_is_error_and_not_retried():
    calls = []

    async def boom(ctx: RunContext) -> None:
        calls.append(1)
        raise ValueError("bad input")

    rec = await run_with_budget(boom, Budget(1000))
    assert rec.outcome == "error" and rec.error == "ValueError: bad input"
    assert len(calls) == 1 and rec.retries == 0


async def test_agent_that_swallows_one_cancel_is_cancelled_again():
    async def stubborn(ctx: RunContext) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(10)

    rec = await run_with_budget(stubborn, Budget(20))
    assert rec.outcome == "killed" and rec.stopped
    assert "swallowed cancellation" in (rec.note or "")
    assert rec.overrun_ms < SLACK_MS


async def test_agent_that_never_stops_is_reported_and_fenced():
    release = asyncio.Event()
    seen: list[RunContext] = []

    async def zombie(ctx: RunContext) -> None:
        seen.append(ctx)
        while not release.is_set():
            try:
                await asyncio.sleep(0.002)
            except asyncio.CancelledError:
                pass

    enforcer = Enforcer(cancel_grace_ms=30)
    rec = await enforcer.run(zombie, Budget(20))
    assert rec.outcome == "killed" and rec.stopped is False
    assert "ignored cancellation" in (rec.note or "")
    assert len(enforcer.unstopped) == 1
    with pytest.raises(DeadlineExceeded):  # every context call of the zombie now raises
        seen[0].count_tool_call()
    release.set()
    await asyncio.wait(set(enforcer.unstopped), timeout=1)
    assert not enforcer.unstopped


async def test_agent_blocking_the_loop_is_detected_and_told_to_isolate():
    async def blocker(ctx: RunContext) -> str:
        time.sleep(0.15)  # CPU-bound / blocking: the loop cannot interrupt this
        return "late"

    rec = await run_with_budget(blocker, Budget(20))
    assert rec.outcome == "killed" and rec.value is None
    assert rec.overrun_ms >= 100  # reported honestly, not hidden
    assert "isolated=True" in (rec.note or "")


async def test_sync_agent_in_process_is_misuse():
    with pytest.raises(UsageError, match="isolated=True"):
        await run_with_budget(whoami, Budget(100))


async def test_tool_call_over_budget_stops_the_run():
    async def tools(ctx: RunContext) -> None:
        for _ in range(10):
            ctx.count_tool_call()
            await asyncio.sleep(0)

    rec = await run_with_budget(tools, Budget(1000, max_tool_calls=3))
    assert rec.outcome == "over_tool_budget" and rec.tool_calls == 3
    assert "ToolCallBudgetExceeded" in (rec.error or "")


async def test_tool_budget_holds_even_if_the_agent_catches_it():
    async def sly(ctx: RunContext) -> str:
        try:
            for _ in range(5):
                ctx.count_tool_call()
        except ToolCallBudgetExceeded:
            pass
        return "done anyway"

    rec = await run_with_budget(sly, Budget(1000, max_tool_calls=1))
    assert rec.outcome == "over_tool_budget" and rec.value is None


async def test_token_budget():
    async def verbose(ctx: RunContext) -> None:
        ctx.count_tokens(600)
        ctx.count_tokens(600)

    rec = await run_with_budget(verbose, Budget(1000, max_llm_tokens=1000))
    assert rec.outcome == "over_token_budget" and rec.llm_tokens == 1200


async def test_staging_without_a_fence_is_misuse():
    async def stager(ctx: RunContext) -> None:
        ctx.stage("ol:u:{u1}:x", "v")

    rec = await run_with_budget(stager, Budget(1000), user_id="u1")
    assert rec.outcome == "error" and "fenced run" in (rec.error or "")


# -- isolated agents -----------------------------------------------------------------------------
async def test_isolated_spinner_is_sigkilled_and_a_warm_spare_serves_next(pool: WorkerPool):
    warm_before = pool.idle_pids()
    assert len(warm_before) == 2
    rec = await run_with_budget(spin, Budget(50), isolated=True, pool=pool)
    assert rec.outcome == "killed" and rec.isolated and rec.retries == 0
    assert rec.worker_pid in warm_before
    assert rec.overrun_ms < SLACK_MS
    assert await _wait_dead(rec.worker_pid), "killed worker is still alive"

    nxt = await run_with_budget(whoami, Budget(2000), isolated=True, pool=pool)
    assert nxt.outcome == "ok"
    assert nxt.value == nxt.worker_pid != rec.worker_pid
    assert nxt.worker_pid in warm_before  # a process that was already warm, not a fresh start

    await pool.wait_full()
    assert pool.stats.killed == 1 and pool.stats.started == 3
    assert len(pool.stats.replacement_ms) == 1
    assert len(pool.idle_pids()) == 2


async def test_isolated_counters_come_back_from_the_worker(pool: WorkerPool):
    rec = await run_with_budget(chatty, Budget(2000, max_tool_calls=2), isolated=True, pool=pool)
    assert rec.outcome == "over_tool_budget" and rec.tool_calls == 2


async def test_isolated_error_keeps_the_worker(pool: WorkerPool):
    rec = await run_with_budget(crash, Budget(2000), isolated=True, pool=pool)
    assert rec.outcome == "error" and "KeyError" in (rec.error or "")
    assert rec.worker_pid in pool.idle_pids()


async def test_isolated_worker_that_dies_is_an_error_and_replaced(pool: WorkerPool):
    rec = await run_with_budget(die, Budget(2000), isolated=True, pool=pool)
    assert rec.outcome == "error" and "died" in (rec.error or "")
    await pool.wait_full()
    assert pool.stats.crashed == 1 and len(pool.idle_pids()) == 2


async def test_isolated_needs_a_pool_and_a_picklable_function(pool: WorkerPool):
    with pytest.raises(UsageError, match="WorkerPool"):
        await run_with_budget(whoami, Budget(100), isolated=True)
    with pytest.raises(UsageError, match="pickle"):
        await run_with_budget(lambda ctx: 1, Budget(100), isolated=True, pool=pool)
    assert len(pool.idle_pids()) == 2


async def test_cancelling_the_caller_kills_the_isolated_run_and_refills(pool: WorkerPool):
    task = asyncio.ensure_future(run_with_budget(spin, Budget(10_000), isolated=True, pool=pool))
    await asyncio.sleep(0.2)
    spare = set(pool.idle_pids())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await pool.wait_full()
    assert pool.stats.killed == 1 and len(pool.idle_pids()) == 2
    assert spare <= set(pool.idle_pids())  # the spare was untouched


def test_a_record_is_json_ready_whatever_the_agent_returned():
    from types import MappingProxyType

    from outerloop.contracts.run_record import RunRecord

    rec = RunRecord(run_id="r1", agent="memory", budget_ms=80.0, elapsed_ms=3.0, outcome="ok",
                    value={"facts": MappingProxyType({"a": 1})})  # neither copies nor serializes
    data = rec.to_dict()
    assert "value" not in data and data["agent"] == "memory" and data["retries"] == 0
