"""Warm worker processes for CPU-bound (``isolated=True``) agents, killable at the deadline.

An in-process agent can only be stopped cooperatively (cancellation). CPU-bound code never
yields, so it runs here instead: in a worker process that the pool SIGKILLs at the deadline.
The pool keeps ``size`` processes started and their modules imported (``preload``); a killed
worker is replaced in the background, so the next run takes an already-warm spare instead of
paying a process start inside its own budget.

Workers come from the ``forkserver`` start method by default: each is forked from a small,
clean server process that pre-imported the modules, which is fast and safe however many
threads the parent has (plain ``fork`` of a threaded parent is not).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from outerloop.budgets.context import RunContext
from outerloop.contracts.run_record import ErrorInfo
from outerloop.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerReply:
    """What a worker sends back after a run: the value or the error, and the context as the
    agent left it (counters, staged writes)."""

    value: Any
    error: ErrorInfo | None
    ctx: RunContext
    finished_at: float  # time.monotonic() in the worker when the agent returned


@dataclass(frozen=True, slots=True)
class IsolatedOutcome:
    """How an isolated run ended: a reply, a kill at the deadline, or a crashed worker."""

    pid: int
    reply: WorkerReply | None = None
    killed: bool = False
    crashed: str | None = None
    stopped_at: float = 0.0  # monotonic: reply received / process observed dead


@dataclass(slots=True)
class PoolStats:
    """Counters for benches and metrics; times in ms."""

    started: int = 0
    killed: int = 0
    crashed: int = 0
    replacement_ms: list[float] = field(default_factory=list)  # kill -> replacement ready
    acquire_wait_ms: list[float] = field(default_factory=list)  # run waited for an idle worker


# -- the worker process -------------------------------------------------------------------------
def _worker_main(conn: Connection, preload: Sequence[str], nice: int) -> None:
    """Entry point of a worker process: import, say ready, then run jobs until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers end
    for module in preload:
        if module != "__main__":
            importlib.import_module(module)
    try:
        conn.send(("ready", os.getpid()))
    except OSError:  # the pool closed while we started
        return
    if nice:  # only now: starting up at normal priority keeps spare replacement quick
        os.nice(nice)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        fn, args, ctx = job
        reply = _execute(fn, args, ctx)
        try:
            conn.send(reply)
        except Exception as exc:  # the value did not pickle: report that instead
            conn.send(WorkerReply(None, ErrorInfo("other", f"result not picklable: {exc!r}"),
                                  reply.ctx, reply.finished_at))


def _execute(fn: Callable[..., Any], args: tuple[Any, ...], ctx: RunContext) -> WorkerReply:
    try:
        if inspect.iscoroutinefunction(fn):
            value = asyncio.run(fn(ctx, *args))
        else:
            value = fn(ctx, *args)
        error = None
    except Exception as exc:  # any agent failure is data for the run record
        value, error = None, ErrorInfo.from_exception(exc)
    return WorkerReply(value, error, ctx, time.monotonic())


# -- the parent side ----------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class _Worker:
    process: Any  # multiprocessing.process.BaseProcess
    conn: Connection
    pid: int
    death_fd: int  # pidfd (readable once the process is dead) or the process sentinel
    owns_fd: bool  # True for a pidfd we must close


Scheduling = tuple[int, int] | None  # (policy, priority) of a thread, None where unknown


def _scheduling() -> Scheduling:
    """The calling thread's scheduling policy and priority (Linux; None elsewhere)."""
    try:
        return os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    except (AttributeError, OSError):
        return None


def _adopt(scheduling: Scheduling) -> None:
    """Make the calling thread (the pool's own executor thread) run at ``scheduling``.

    If the event loop runs at a raised priority (a supervisor given SCHED_RR so that kills are
    on time), a normal-priority helper thread that is preempted while it holds the GIL would
    stall the loop for as long as a busy machine keeps that thread off the CPU: priority
    inversion. So the helper runs at the loop's priority, for good (lowering it again would
    hand the CPU away with the GIL held), and with reset-on-fork, so that the processes it
    starts (the forkserver) stay at normal priority.
    """
    if scheduling is None or scheduling == _scheduling():
        return
    policy, priority = scheduling
    try:
        os.sched_setscheduler(0, policy | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError:  # not permitted: stay as we are
        pass


async def _readable(fd: int, timeout_s: float | None) -> bool:
    """Wait until ``fd`` is readable; False on timeout."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def _on_ready() -> None:
        if not ready.done():
            ready.set_result(time.monotonic())

    loop.add_reader(fd, _on_ready)
    try:
        done, _ = await asyncio.wait({ready}, timeout=timeout_s)
        return bool(done)
    finally:
        loop.remove_reader(fd)


class WorkerPool:
    """Keeps ``size`` warm worker processes; runs one isolated agent per worker at a time.

    Size it at the number of isolated runs you allow at once plus at least one spare, so that a
    kill never leaves the next run waiting for a process start. ``worker_nice`` lowers the
    workers' CPU priority so that the supervising event loop (which must deliver the kill on
    time) always gets the CPU first. ``preload`` names modules every worker imports before it
    is counted ready (the agents' own modules, heavy libraries). ``hasten_exit``: see
    :meth:`_hasten_exit`.

    On a busy machine the kill is only as punctual as the supervising process is scheduled:
    run it at a raised priority (``SCHED_RR`` with ``SCHED_RESET_ON_FORK``, as
    ``bench/budgets.py --priority rt`` does) *before* starting the pool; the pool's helper
    threads take the priority of the thread that started it (see :func:`_adopt`).
    """

    def __init__(
        self,
        size: int = 2,
        *,
        preload: Sequence[str] = (),
        start_method: str = "forkserver",
        worker_nice: int = 10,
        hasten_exit: bool = True,
        start_timeout_s: float = 60.0,
    ) -> None:
        if size < 1:
            raise UsageError(f"WorkerPool size must be >= 1, got {size}")
        self.size = size
        self.preload = ("outerloop.budgets.pool", *preload)
        self.worker_nice = worker_nice
        self.hasten_exit = hasten_exit
        self.start_timeout_s = start_timeout_s
        self.stats = PoolStats()
        self._mp = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Only effective before this interpreter's forkserver starts; workers import
            # ``preload`` themselves anyway, so it is an optimisation, not a requirement.
            self._mp.set_forkserver_preload(["__main__", *self.preload])
        self._idle: deque[_Worker] = deque()  # warm workers, oldest first
        self._waiters: deque[asyncio.Future[_Worker]] = deque()  # runs waiting for one
        self._all: set[_Worker] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None  # process starts/joins, off the loop

    async def __aenter__(self) -> "WorkerPool":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start all workers and wait until each has imported its modules."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.size, thread_name_prefix="outerloop-pool",
                initializer=_adopt, initargs=(_scheduling(),))
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size - len(self._all))))
        for w in workers:
            self._release(w)

    def idle_pids(self) -> list[int]:
        """Pids of the warm workers waiting for a run (a snapshot)."""
        return [w.pid for w in self._idle]

    async def wait_full(self, timeout_s: float = 30.0) -> None:
        """Wait until every replacement started after a kill is warm (tests, benches)."""
        end = time.monotonic() + timeout_s
        while self._background and time.monotonic() < end:
            await asyncio.wait(set(self._background), timeout=end - time.monotonic())

    async def execute(self, fn: Callable[..., Any], ctx: RunContext,
                      args: tuple[Any, ...] = ()) -> IsolatedOutcome:
        """Run ``fn(ctx, *args)`` in a warm worker; SIGKILL it at ``ctx.deadline``."""
        if self._closed:
            raise UsageError("WorkerPool is closed")
        t0 = time.monotonic()
        worker = await self._acquire(ctx.deadline)
        if worker is None:  # no worker free before the deadline: the run never started
            return IsolatedOutcome(pid=0, killed=True, stopped_at=time.monotonic())
        self.stats.acquire_wait_ms.append((time.monotonic() - t0) * 1000.0)
        try:
            worker.conn.send((fn, args, ctx))  # pickled fully before anything is written
        except Exception as exc:
            self._release(worker)
            raise UsageError(f"isolated agent {ctx.agent!r}: the function, its args and deps "
                             f"must pickle (module-level function): {exc!r}") from exc
        try:
            in_time = await _readable(worker.conn.fileno(), max(0.0, ctx.deadline - time.monotonic()))
        except BaseException:  # our caller was cancelled: the worker's state is unknown
            self._kill(worker)
            self.stats.killed += 1
            self._replace(worker, time.monotonic())
            raise
        if in_time:
            try:
                reply = worker.conn.recv()
            except (EOFError, OSError) as exc:
                stopped = time.monotonic()
                self.stats.crashed += 1
                self._replace(worker, stopped)
                return IsolatedOutcome(pid=worker.pid, crashed=f"worker process died: {exc!r}",
                                       stopped_at=stopped)
            except Exception as exc:  # the whole message was read; only unpickling failed
                self._release(worker)
                return IsolatedOutcome(pid=worker.pid, stopped_at=time.monotonic(),
                                       crashed=f"reply could not be unpickled: {exc!r}")
            self._release(worker)
            return IsolatedOutcome(pid=worker.pid, reply=reply, stopped_at=time.monotonic())
        stopped = await self._kill_and_confirm(worker)
        return IsolatedOutcome(pid=worker.pid, killed=True, stopped_at=stopped)

    async def close(self) -> None:
        """Stop every worker: idle ones are asked to exit, the rest are killed."""
        self._closed = True
        if self._background:  # let replacements finish starting; they see _closed and exit
            await asyncio.wait(set(self._background), timeout=self.start_timeout_s)
        while self._idle:
            w = self._idle.popleft()
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in list(self._all):
            await self._in_thread(w.process.join, 2.0)
            if w.process.is_alive():
                self._kill(w)
                await self._in_thread(w.process.join, 2.0)
            self._forget(w)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    # -- internals -------------------------------------------------------------------------------
    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            raise UsageError("WorkerPool is not started (use `async with WorkerPool(...)`)")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _acquire(self, deadline: float) -> _Worker | None:
        """An idle worker (first come, first served), or None if none frees up before
        ``deadline``."""
        if self._idle:
            return self._idle.popleft()
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=max(0.0, deadline - time.monotonic()))
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed over as we were cancelled: give back
            waiter.cancel()
            raise
        if waiter.done() and not waiter.cancelled():
            return waiter.result()
        waiter.cancel()
        return None

    def _release(self, worker: _Worker) -> None:
        """Hand a warm worker to the oldest waiting run, or park it as idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    async def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        proc = self._mp.Process(
            target=_worker_main,
            args=(child_conn, self.preload, self.worker_nice),
            name="outerloop-isolated-agent",
            daemon=True,
        )
        await self._in_thread(proc.start)  # a forkserver round trip: keep it off the loop
        child_conn.close()
        if not await _readable(parent_conn.fileno(), self.start_timeout_s):
            proc.kill()
            raise UsageError(f"worker process {proc.pid} did not start in {self.start_timeout_s} s")
        try:
            tag, pid = parent_conn.recv()
        except (EOFError, OSError) as exc:
            await self._in_thread(proc.join, 5.0)
            raise UsageError(f"worker process {proc.pid} exited while starting (exit code "
                             f"{proc.exitcode}); can it import {list(self.preload)}?") from exc
        if tag != "ready" or pid != proc.pid:
            raise RuntimeError(f"unexpected hello from worker {proc.pid}: {(tag, pid)!r}")
        try:
            death_fd, owns = os.pidfd_open(pid), True
        except (AttributeError, OSError):  # no pidfd: the sentinel works, a little later
            death_fd, owns = proc.sentinel, False
        worker = _Worker(proc, parent_conn, pid, death_fd, owns)
        self._all.add(worker)
        self.stats.started += 1
        return worker

    def _kill(self, worker: _Worker) -> None:
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._hasten_exit(worker.pid)

    def _hasten_exit(self, pid: int) -> None:
        """A SIGKILLed process still needs the CPU once to exit, and a niced worker on a busy
        machine may wait tens of ms for it. With the SIGKILL already pending it can never run
        user code again, so lifting it to the lowest real-time priority only lets the kernel
        finish it now. Needs CAP_SYS_NICE; without it the worker exits at its own pace."""
        if not self.hasten_exit:
            return
        try:
            os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(1))
        except (AttributeError, OSError):  # not permitted, or already gone
            pass

    async def _kill_and_confirm(self, worker: _Worker) -> float:
        """SIGKILL now; return the monotonic time the process was seen dead."""
        killed_at = time.monotonic()
        self._kill(worker)
        if not await _readable(worker.death_fd, 5.0):
            log.error("worker %s still alive 5 s after SIGKILL", worker.pid)
        stopped = time.monotonic()
        self.stats.killed += 1
        self._replace(worker, killed_at)
        return stopped

    def _replace(self, worker: _Worker, since: float) -> None:
        """Reap ``worker`` and start its replacement, both in the background."""
        task = asyncio.get_running_loop().create_task(self._reap_and_respawn(worker, since))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reap_and_respawn(self, worker: _Worker, since: float) -> None:
        # Dead already; wait for its exit status without a thread (a thread would compete
        # with the event loop for the GIL exactly when deadlines are being enforced).
        if await _readable(worker.process.sentinel, 5.0):
            worker.process.join(0)
        self._forget(worker)
        if self._closed:
            return
        try:
            fresh = await self._spawn()
        except Exception:  # the pool runs one short; runs wait (within budget) for the rest
            log.exception("could not start a replacement worker")
            return
        self.stats.replacement_ms.append((time.monotonic() - since) * 1000.0)
        if self._closed:
            fresh.conn.send(None)
            return
        self._release(fresh)

    def _forget(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.conn.close()
        if worker.owns_fd:
            try:
                os.close(worker.death_fd)
            except OSError:
                pass
            worker.owns_fd = False
