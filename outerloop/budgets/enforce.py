"""Run an agent under its budget: stop it at the deadline, never retry it, fence its writes.

LangGraph's ``TimeoutPolicy`` only cancels cooperatively and its default ``RetryPolicy`` retries
timeouts, so enforcement lives here and graph nodes call :meth:`Enforcer.run` with no retry
policy. Two modes:

* in-process (``async def`` agents): cancelled at the deadline. An agent that swallows
  ``CancelledError`` is cancelled again every millisecond for ``cancel_grace_ms``; if it still
  runs it is reported (``stopped=False``) and left fenced: its context raises on every call and
  its token is revoked. An agent that blocks the event loop cannot be interrupted in-process:
  the watchdog (:mod:`outerloop.budgets.watchdog`) notices it, the run is recorded as killed
  (``blocked_event_loop``) with its real overrun, nothing it staged is committed, and from then
  on the agent runs isolated (or not at all: ``on_blocking="disable"``).
* isolated (``isolated=True``, CPU-bound code): run in a :class:`WorkerPool` process that is
  SIGKILLed at the deadline and replaced by a warm spare.

Writes are staged on the :class:`RunContext` and committed by one fenced script after a run
that ended in time; a run that did not end in time has its token revoked and writes dropped.

Every run, killed and failed ones included, is one ``agent.run`` span (the current span's child;
the agent's own spans and tool calls are its children) and one sample of the run metrics: the
enforcer is the one place that sees every run and how it ended.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from outerloop.contracts.budget import Budget
from outerloop.budgets.context import RunContext
from outerloop.budgets.fencing import Fence, FenceRejected, GuardFailed, Lease
from outerloop.budgets.pool import WorkerPool
from outerloop.contracts.run_record import ErrorInfo, Outcome, RunRecord
from outerloop.budgets.watchdog import BLOCKED, LoopWatchdog, Slice, TimedRun
from outerloop.budgets.watchdog import FIX as BLOCKING_FIX
from outerloop.errors import UsageError
from outerloop.telemetry import agent_run_span, span

log = logging.getLogger(__name__)

ISOLATE_HINT = "CPU-bound or blocking code must run with isolated=True"


@dataclass(slots=True)
class _End:
    """How the agent's execution ended, before classification and commit."""

    ctx: RunContext  # for isolated runs: the context as the worker returned it
    stopped_at: float  # monotonic: agent returned / task finished / process dead
    value: Any = None
    error: ErrorInfo | None = None
    killed: bool = False  # stopped by us at the deadline
    stopped: bool = True
    worker_pid: int | None = None
    note: str | None = None
    revoke: asyncio.Task[Any] | None = None
    blocked_ms: float = 0.0  # how far past the deadline it held the event loop (watchdog)


@dataclass(frozen=True, slots=True)
class Offence:
    """An in-process agent's first run that blocked the event loop past its deadline, and what
    the enforcer does with the agent since (``"isolate"`` or ``"disable"``)."""

    agent: str
    run_id: str
    overrun_ms: float
    then: str


class Enforcer:
    """Runs agents under budgets. Holds what outlives one run: the fence, the worker pool and
    in-process agents that ignored cancellation (kept referenced until they end).

    ``cancel_grace_ms``: how long to keep re-cancelling an agent that swallows cancellation.
    ``loop_lag_ms``: a deadline timer firing later than this means the event loop was blocked;
    an in-process agent whose own code ran this long past its deadline without awaiting
    blocked it (``watchdog=True``): its later runs are isolated in a worker process
    (``on_blocking="isolate"``, from ``pool`` or one ``pool_factory()`` makes) or not run
    (``"disable"``); :attr:`offences` says which agents and why.
    """

    def __init__(
        self,
        *,
        fence: Fence | None = None,
        pool: WorkerPool | None = None,
        cancel_grace_ms: float = 100.0,
        loop_lag_ms: float = 20.0,
        max_redecides: int = 20,
        watchdog: bool = True,
        on_blocking: str = "isolate",
        pool_factory: Callable[[], WorkerPool] | None = None,
    ) -> None:
        if on_blocking not in ("isolate", "disable"):
            raise UsageError(f"on_blocking must be 'isolate' or 'disable', got {on_blocking!r}")
        self.fence = fence
        self.max_redecides = max_redecides
        self.pool = pool
        self.pool_factory = pool_factory
        self.cancel_grace_ms = cancel_grace_ms
        self.loop_lag_ms = loop_lag_ms
        self.on_blocking = on_blocking
        self.watchdog = LoopWatchdog(grace_ms=loop_lag_ms, then="isolated" if on_blocking == "isolate"
                                     else "no more") if watchdog else None
        self.offences: dict[str, Offence] = {}
        self.blocked_runs: dict[str, RunRecord] = {}
        self.unstopped: set[asyncio.Task[Any]] = set()
        self._own_pool = False
        self._pool_start: asyncio.Task[Any] | None = None

    def demoted(self, agent: str) -> str | None:
        """``"isolate"`` or ``"disable"`` for an agent that blocked the event loop, else None."""
        off = self.offences.get(agent)
        return off.then if off is not None else None

    async def pool_ready(self) -> None:
        """Wait until a worker pool started for offenders is warm (tests, benches)."""
        if self._pool_start is not None:
            await asyncio.shield(self._pool_start)

    async def aclose(self) -> None:
        """Stop the watchdog and a worker pool this enforcer started itself."""
        if self.watchdog is not None:
            self.watchdog.close()
        if self._pool_start is not None:
            await asyncio.gather(self._pool_start, return_exceptions=True)
        if self._own_pool and self.pool is not None:
            await self.pool.close()
            self.pool, self._own_pool = None, False

    def _ensure_pool(self) -> None:
        """A worker pool for isolated runs: ``pool_factory``'s, started in the background."""
        if self.pool is not None or self.pool_factory is None:
            return
        self.pool, self._own_pool = self.pool_factory(), True
        self._pool_start = asyncio.get_running_loop().create_task(self.pool.start())

    async def run(
        self,
        fn: Callable[..., Any],
        budget: Budget,
        *args: Any,
        agent: str | None = None,
        user_id: str | None = None,
        isolated: bool = False,
        deps: Any = None,
    ) -> RunRecord:
        """Run ``fn(ctx, *args)`` once under ``budget``; never raises for agent failures.

        With a fence and a ``user_id`` the run holds a fencing token and may stage writes.
        Raises :class:`UsageError` for misuse (sync function in-process, isolated without a
        pool, unpicklable isolated job).
        """
        name = agent or getattr(fn, "__name__", "agent")
        then = self.demoted(name)
        if then == "disable" and not isolated:
            return self._disabled(name, budget)
        if then == "isolate":
            isolated = True  # (the graph passes an agent's isolated form itself)
        if isolated:
            self._ensure_pool()
        if isolated and self.pool is None:
            raise UsageError(f"agent {name!r} is isolated but the Enforcer has no WorkerPool")
        if not isolated and not inspect.iscoroutinefunction(fn):
            raise UsageError(f"agent {name!r} is not async def; {ISOLATE_HINT}")
        # the agent's task is created inside the span, so its spans (tool calls) are children
        with agent_run_span(name, budget.latency_ms, user_id=user_id, isolated=isolated) as obs:
            lease: Lease | None = None
            if self.fence is not None and user_id is not None:
                lease = await self.fence.acquire(user_id, budget.latency_ms)
            ctx = RunContext(
                run_id=uuid.uuid4().hex, agent=name, budget=budget, started_at=time.monotonic(),
                user_id=user_id, fencing_token=lease.token if lease else None, deps=deps,
            )
            try:
                if isolated:
                    end = await self._run_isolated(fn, ctx, args)
                else:
                    end = await self._run_inline(fn, ctx, args, lease)
            except BaseException:  # we were cancelled (or misused): the run is abandoned
                ctx._stop()
                if lease is not None:
                    await asyncio.shield(self._revoke(lease))
                raise
            try:
                record = await self._finish(ctx, end, lease, isolated)
            except asyncio.CancelledError:  # e.g. the graph's backstop, late because the loop was blocked
                if end.blocked_ms > 0:
                    self.blocked_runs[ctx.agent] = self._blocked_record(ctx, end.blocked_ms, end.stopped_at)
                raise
            obs.finish(record)
            return record

    # -- in-process ------------------------------------------------------------------------------
    async def _run_inline(self, fn: Callable[..., Any], ctx: RunContext, args: tuple[Any, ...],
                          lease: Lease | None) -> _End:
        wd = self.watchdog
        if wd is None:
            return await self._run_inline_watched(fn, ctx, args, lease, None)
        wd.run_started()
        try:
            return await self._run_inline_watched(fn, ctx, args, lease, wd)
        finally:
            wd.run_ended()

    async def _run_inline_watched(self, fn: Callable[..., Any], ctx: RunContext, args: tuple[Any, ...],
                                  lease: Lease | None, wd: LoopWatchdog | None) -> _End:
        ended: list[float] = []
        coro = fn(ctx, *args)
        timed = TimedRun(coro, Slice(ctx.agent, ctx.run_id, ctx.deadline), wd) if wd is not None else None

        async def body() -> Any:
            try:
                return await (timed if timed is not None else coro)
            finally:
                ended.append(time.monotonic())

        task = asyncio.get_running_loop().create_task(body(), name=f"agent:{ctx.agent}:{ctx.run_id}")
        try:
            await asyncio.wait({task}, timeout=max(0.0, ctx.deadline - time.monotonic()))
        except BaseException:
            task.cancel()
            if timed is not None and timed.blocked_ms > 0:  # e.g. the graph's backstop fired first
                ctx._stop()
                stopped = time.monotonic()
                self._offence(ctx, timed.blocked_ms, stopped)
                self.blocked_runs[ctx.agent] = self._blocked_record(ctx, timed.blocked_ms, stopped)
            raise
        end = await self._after_deadline(task, ctx, ended, lease)
        if timed is not None and timed.blocked_ms > 0:
            ctx._stop()
            end.blocked_ms = timed.blocked_ms
            self._offence(ctx, timed.blocked_ms, end.stopped_at)
        return end

    async def _after_deadline(self, task: asyncio.Task[Any], ctx: RunContext, ended: list[float],
                              lease: Lease | None) -> _End:
        woke = time.monotonic()
        lag_ms = (woke - ctx.deadline) * 1000.0
        if task.done():
            value, error = _result(task)
            end = _End(ctx, ended[0] if ended else woke, value=value, error=error)
            if end.stopped_at > ctx.deadline and lag_ms > self.loop_lag_ms:
                end.note = _lag_note(lag_ms)
            return end

        # Deadline: fence first (the revoke's request goes out before the agent runs again),
        # then cancel, and keep cancelling an agent that swallows it.
        ctx._stop()
        revoke = self._revoke_soon(lease)
        task.cancel()
        give_up = time.monotonic() + self.cancel_grace_ms / 1000.0
        swallowed = 0
        while not task.done() and time.monotonic() < give_up:
            await asyncio.wait({task}, timeout=min(0.001, max(0.0, give_up - time.monotonic())))
            if not task.done():
                swallowed += 1
                task.cancel()
        end = _End(ctx, woke, killed=True, revoke=revoke)
        if task.done():
            _result(task)  # consume the outcome so asyncio does not log it
            end.stopped_at = ended[0] if ended else time.monotonic()
            if swallowed:
                end.note = f"agent swallowed cancellation; stopped after {swallowed + 1} cancels"
        else:
            end.stopped_at = time.monotonic()
            end.stopped = False
            end.note = (f"agent ignored cancellation for {self.cancel_grace_ms:g} ms and may still "
                        "run; its context raises and its fencing token is revoked")
            self.unstopped.add(task)
            task.add_done_callback(_forget_unstopped(self.unstopped))
            log.warning("agent %s (run %s) ignores cancellation", ctx.agent, ctx.run_id)
        if lag_ms > self.loop_lag_ms:
            end.note = ((end.note + "; ") if end.note else "") + _lag_note(lag_ms)
        return end

    # -- isolated --------------------------------------------------------------------------------
    async def _run_isolated(self, fn: Callable[..., Any], ctx: RunContext,
                            args: tuple[Any, ...]) -> _End:
        assert self.pool is not None
        out = await self.pool.execute(fn, ctx, args)
        if out.killed:
            ctx._stop()
            return _End(ctx, out.stopped_at, killed=True, worker_pid=out.pid or None,
                        note=None if out.pid else "no worker free before the deadline")
        if out.crashed is not None:
            return _End(ctx, out.stopped_at, error=ErrorInfo("other", out.crashed),
                        worker_pid=out.pid)
        reply = out.reply
        assert reply is not None
        return _End(reply.ctx, reply.finished_at, value=reply.value, error=reply.error,
                    worker_pid=out.pid)

    def take_blocked_run(self, agent: str) -> RunRecord | None:
        """The record of ``agent``'s run that blocked the event loop and was then cancelled from
        outside (the graph's backstop timeout) before the enforcer could return it."""
        return self.blocked_runs.pop(agent, None)

    def _blocked_record(self, ctx: RunContext, blocked_ms: float, stopped_at: float) -> RunRecord:
        outcome, error = _classify(_End(ctx, stopped_at, blocked_ms=blocked_ms), ctx.deadline)
        return RunRecord(run_id=ctx.run_id, agent=ctx.agent, budget_ms=ctx.budget.latency_ms,
                         elapsed_ms=(stopped_at - ctx.started_at) * 1000.0, outcome=outcome,
                         overrun_ms=max(0.0, (stopped_at - ctx.deadline) * 1000.0), tool_calls=ctx.tool_calls,
                         llm_tokens=ctx.llm_tokens, error=error, fencing_token=ctx.fencing_token,
                         note=BLOCKING_FIX)

    def _offence(self, ctx: RunContext, blocked_ms: float, stopped_at: float) -> None:
        """The first run of an agent that blocked the event loop: from now on it is isolated (or
        disabled); the warning names the agent and the fix."""
        if ctx.agent in self.offences:
            return
        overrun = max(0.0, (stopped_at - ctx.deadline) * 1000.0)
        then = self.on_blocking
        if then == "isolate" and self.pool is None and self.pool_factory is None:
            then = "disable"  # nowhere to isolate it
        self.offences[ctx.agent] = Offence(ctx.agent, ctx.run_id, overrun, then)
        if then == "isolate":
            self._ensure_pool()  # warm before its next run
        log.warning("agent %r blocked the event loop for %.0f ms past its %g ms deadline (run %s); it was "
                    "killed, nothing it staged is committed, and it %s. Fix: %s", ctx.agent, blocked_ms,
                    ctx.budget.latency_ms, ctx.run_id,
                    "runs isolated in a worker process from now on" if then == "isolate" else "is disabled",
                    BLOCKING_FIX)

    def _disabled(self, name: str, budget: Budget) -> RunRecord:
        off = self.offences[name]
        return RunRecord(run_id="-", agent=name, budget_ms=budget.latency_ms, elapsed_ms=0.0, outcome="error",
                         error=f"disabled: it blocked the event loop (run {off.run_id}, {off.overrun_ms:.0f} ms "
                               "past its deadline)", note=BLOCKING_FIX)

    # -- bookkeeping -----------------------------------------------------------------------------
    async def _finish(self, ctx: RunContext, end: _End, lease: Lease | None,
                      isolated: bool) -> RunRecord:
        outcome, error = _classify(end, ctx.deadline)
        note = end.note
        writes = 0
        stopped_at = end.stopped_at
        if end.revoke is not None:
            await asyncio.shield(end.revoke)
        elif lease is not None:
            if outcome == "ok" and (end.ctx.staged or end.ctx.conditional):
                try:
                    with span("agent.commit", user_id=lease.user_id, staged=len(end.ctx.staged)):
                        writes = await asyncio.shield(self._commit(lease, end.ctx))
                except FenceRejected as exc:
                    outcome, error = "killed", str(exc)
                    note = "finished in time but the commit reached Redis after the deadline"
                except GuardFailed as exc:
                    outcome, error = "error", f"{exc} (still, after {self.max_redecides} decisions)"
                    await asyncio.shield(self._revoke(lease))
                except Exception as exc:  # a re-decision failed: nothing was written
                    outcome, error = "error", f"commit failed: {type(exc).__name__}: {exc}"
                    await asyncio.shield(self._revoke(lease))
                stopped_at = time.monotonic()
            else:  # nothing to commit (or not allowed to): end the lease either way
                await asyncio.shield(self._revoke(lease))
        overrun = max(0.0, (stopped_at - ctx.deadline) * 1000.0) if outcome == "killed" else 0.0
        return RunRecord(
            run_id=ctx.run_id,
            agent=ctx.agent,
            budget_ms=ctx.budget.latency_ms,
            elapsed_ms=(stopped_at - ctx.started_at) * 1000.0,
            outcome=outcome,
            overrun_ms=overrun,
            retries=0,
            tool_calls=end.ctx.tool_calls,
            llm_tokens=end.ctx.llm_tokens,
            error=error,
            isolated=isolated,
            worker_pid=end.worker_pid,
            fencing_token=ctx.fencing_token,
            writes_committed=writes,
            stopped=end.stopped,
            note=note,
            value=end.value if outcome == "ok" else None,
        )

    async def _commit(self, lease: Lease, ctx: RunContext) -> int:
        """Everything the run staged, in one fenced script; a conditional write whose guard no
        longer holds is decided again on what the guard found (never written stale), up to
        ``max_redecides`` times, under the same lease (its deadline still applies)."""
        assert self.fence is not None
        conds = list(ctx.conditional)
        for attempt in range(1, self.max_redecides + 1):
            live = [c for c in conds if c is not None]
            writes = [*ctx.staged, *(w for c in live for w in c.writes)]
            try:
                n = await self.fence.commit(lease.user_id, lease.token, writes, guards=[c.guard for c in live])
            except GuardFailed as exc:
                if attempt == self.max_redecides:
                    raise
                broken = live[exc.index]
                if broken.redecide is None:
                    raise
                fresh = await broken.redecide(exc.current)
                if fresh is not None:
                    fresh.attempts = broken.attempts + 1
                    fresh.on_commit = fresh.on_commit or broken.on_commit
                conds[conds.index(broken)] = fresh
                continue
            for c in live:
                if c.on_commit is not None:
                    c.on_commit(c.attempts)
            return n
        raise AssertionError("unreachable")

    def _revoke_soon(self, lease: Lease | None) -> asyncio.Task[Any] | None:
        if lease is None:
            return None
        return asyncio.get_running_loop().create_task(self._revoke(lease))

    async def _revoke(self, lease: Lease) -> None:
        assert self.fence is not None
        try:
            await self.fence.revoke(lease.user_id, lease.token)
        except Exception:  # the lease also dies at its deadline: a failed revoke is not fatal
            log.exception("could not revoke fencing token %s of user %s", lease.token, lease.user_id)


async def run_with_budget(
    fn: Callable[..., Any],
    budget: Budget,
    *args: Any,
    agent: str | None = None,
    user_id: str | None = None,
    isolated: bool = False,
    deps: Any = None,
    fence: Fence | None = None,
    pool: WorkerPool | None = None,
) -> RunRecord:
    """One-off form of :meth:`Enforcer.run` (a long-lived caller should keep one Enforcer)."""
    enforcer = Enforcer(fence=fence, pool=pool)
    return await enforcer.run(fn, budget, *args, agent=agent, user_id=user_id,
                              isolated=isolated, deps=deps)


def _lag_note(lag_ms: float) -> str:
    return (f"the event loop got control back {lag_ms:.0f} ms after the deadline (blocked by "
            f"code that does not yield, or starved of CPU); {ISOLATE_HINT}")


def _result(task: asyncio.Task[Any]) -> tuple[Any, ErrorInfo | None]:
    if task.cancelled():
        return None, ErrorInfo("deadline", "CancelledError: cancelled at the deadline")
    exc = task.exception()
    if exc is not None:
        return None, ErrorInfo.from_exception(exc)
    return task.result(), None


def _classify(end: _End, deadline: float) -> tuple[Outcome, str | None]:
    """One place that decides the outcome, for both modes."""
    budget_ms = end.ctx.budget.latency_ms
    exceeded = end.ctx.exceeded
    if exceeded is not None:  # over a counter, even if the agent caught the exception
        kind = ErrorInfo.from_exception(exceeded)
        return ("over_tool_budget" if kind.kind == "tool_calls" else "over_token_budget"), kind.message
    if end.blocked_ms > 0:
        return "killed", (f"{BLOCKED}: held the event loop {end.blocked_ms:.0f} ms past its {budget_ms:g} ms "
                          "deadline without awaiting")
    if end.killed:
        return "killed", f"DeadlineExceeded: killed at its {budget_ms:g} ms deadline"
    if end.error is not None:
        if end.error.kind == "deadline":
            return "killed", end.error.message
        return "error", end.error.message
    if end.stopped_at > deadline:
        return "killed", f"DeadlineExceeded: finished after its {budget_ms:g} ms deadline"
    return "ok", None


def _forget_unstopped(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def _done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: nothing is logged for a zombie's last error

    return _done
