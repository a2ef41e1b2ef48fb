"""Event-loop protection: notice an in-process agent that holds the loop past its deadline.

An ``async def`` agent that does CPU work without awaiting cannot be cancelled: cancellation is
delivered at the next ``await``, and until then nothing else on the event loop runs (no other
user's cycle, no deadline timer). Two parts find it:

- :class:`TimedRun` wraps the agent's coroutine and times every *slice* it runs on the loop (from
  resuming it to its next suspension), so the time is attributed to the agent that held the
  loop, not to whoever waited. A slice blocked the loop when it ran past ``deadline + grace``
  and either did at least ``grace`` of CPU work after the deadline (its CPU time minus the wall
  time it had before the deadline) or lasted ``10 x grace`` past it (a blocking call): a short
  slice stretched only because a busy machine preempted the process, or an ordinary step that
  merely straddles the deadline, is not an offence;
- :class:`LoopWatchdog`, a thread, looks at the slice running now every ``poll_ms`` and warns,
  while it happens, when it has gone ``grace_ms`` past its run's deadline: it names the agent and
  the fix.

The enforcer then records the run as killed (``blocked_event_loop``), commits nothing it staged,
and from then on runs that agent isolated (a worker process, SIGKILLed at the deadline) or not at
all, as configured (:attr:`~outerloop.budgets.enforce.Enforcer.on_blocking`). The first offence
cannot be cut short in-process; its overrun is reported as it was.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BLOCKED = "blocked_event_loop"
FIX = ("declare it @agent(isolated=True) for CPU-bound work, or await the blocking part "
       "(await asyncio.to_thread(...), an async client)")


BLOCKING_CALL_FACTOR = 10.0  # a slice this many graces long blocked the loop, CPU or not


@dataclass(slots=True)
class Slice:
    """The agent run whose code holds the event loop now."""

    agent: str
    run_id: str
    deadline: float  # monotonic
    started: float = 0.0
    cpu_started: float = 0.0  # the loop thread's CPU clock when the slice began
    cpu_clock: int | None = None  # that thread's CPU clock id (read from the watchdog thread)
    thread_id: int = 0
    gc_started: float = 0.0  # the collector's CPU time on that thread when the slice began
    warned: bool = False


class GcClock:
    """CPU time the cyclic garbage collector spent, per thread. A full collection of a big heap
    takes 100 ms or more and lands in whatever code allocated when it began: it is not that
    agent's doing, so a slice's CPU time is counted without it. Installed once per process
    (``gc.callbacks``) by the first watchdog."""

    def __init__(self) -> None:
        self._spent: dict[int, float] = {}
        self._began: dict[int, float] = {}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        tid = threading.get_ident()
        if phase == "start":
            self._began[tid] = time.thread_time()
        else:
            began = self._began.pop(tid, None)
            if began is not None:
                self._spent[tid] = self._spent.get(tid, 0.0) + time.thread_time() - began

    def spent(self, tid: int, cpu_now: float | None = None) -> float:
        """Collector CPU seconds on thread ``tid`` so far (with ``cpu_now``, that thread's CPU
        clock read now, a collection still running counts too)."""
        out = self._spent.get(tid, 0.0)
        began = self._began.get(tid)
        if began is not None and cpu_now is not None:
            out += max(0.0, cpu_now - began)
        return out


GC_CLOCK = GcClock()


def _install_gc_clock() -> None:
    if GC_CLOCK not in gc.callbacks:
        gc.callbacks.append(GC_CLOCK)


def _thread_cpu_clock() -> int | None:
    try:
        return time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):
        return None


def blocked(slice_wall_s: float, slice_cpu_s: float | None, grace_s: float, before_deadline_s: float = 0.0) -> bool:
    """Whether a slice that ran past its deadline + grace held the loop itself: CPU work of at
    least ``grace`` that must have been done after the deadline (the slice's CPU time minus the
    ``before_deadline_s`` of wall time it had before it), or a blocking call of ten graces past
    the deadline. A well-behaved agent whose ordinary 20-30 ms step merely straddles its deadline
    on a loaded machine is not an offender."""
    if slice_cpu_s is None:  # no per-thread CPU clock here: wall time alone
        return True
    before = max(0.0, before_deadline_s)
    return slice_cpu_s - before >= grace_s or slice_wall_s - before >= BLOCKING_CALL_FACTOR * grace_s


class LoopWatchdog:
    """A daemon thread watching the slice in progress (``current``, set by :class:`TimedRun` on
    the loop's thread). It sleeps while no in-process run is in flight."""

    def __init__(self, *, grace_ms: float = 20.0, poll_ms: float = 5.0, then: str = "isolated") -> None:
        self.grace_s = grace_ms / 1000.0
        self.poll_s = poll_ms / 1000.0
        self.then = then  # what happens to an offender (for the warning's text)
        self.current: Slice | None = None
        self.noticed: list[tuple[str, str, float]] = []  # (agent, run_id, ms past the deadline when noticed)
        self._runs = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        _install_gc_clock()
        self._stop = False
        self._thread: threading.Thread | None = None

    def run_started(self) -> None:
        with self._lock:
            self._runs += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="outerloop-loop-watchdog", daemon=True)
                self._thread.start()
        self._wake.set()

    def run_ended(self) -> None:
        with self._lock:
            self._runs -= 1

    def close(self) -> None:
        self._stop = True
        self._wake.set()

    def _main(self) -> None:
        while not self._stop:
            if self._runs <= 0:
                self._wake.wait()
                self._wake.clear()
                continue
            time.sleep(self.poll_s)
            cur = self.current
            if cur is None or cur.warned:
                continue
            now = time.monotonic()
            past = now - cur.deadline
            if past > self.grace_s and cur.started < cur.deadline + self.grace_s:
                cpu = None
                if cur.cpu_clock is not None:
                    try:
                        now_cpu = time.clock_gettime(cur.cpu_clock)
                        cpu = now_cpu - cur.cpu_started - (GC_CLOCK.spent(cur.thread_id, now_cpu) - cur.gc_started)
                    except OSError:
                        cpu = None
                if not blocked(now - cur.started, cpu, self.grace_s, cur.deadline - cur.started):
                    continue
                cur.warned = True
                self.noticed.append((cur.agent, cur.run_id, past * 1000.0))
                log.warning("agent %r is holding the event loop %.0f ms past its deadline (run %s): code in an "
                            "async def agent that does not await blocks every other cycle of this process; it "
                            "is killed when it yields and runs %s from now on. Fix: %s",
                            cur.agent, past * 1000.0, cur.run_id, self.then, FIX)


class TimedRun:
    """Awaitable wrapper of an agent's coroutine that times each slice it holds the loop.

    ``blocked_ms``: how far past the deadline the longest slice that crossed ``deadline +
    grace`` ran (0 when none did)."""

    __slots__ = ("_coro", "_slice", "_watchdog", "blocked_ms")

    def __init__(self, coro: Coroutine[Any, Any, Any], slice_: Slice, watchdog: LoopWatchdog) -> None:
        self._coro = coro
        self._slice = slice_
        self._watchdog = watchdog
        self.blocked_ms = 0.0

    def _ended(self, t0: float, cpu0: float) -> None:
        self._watchdog.current = None
        now = time.monotonic()
        grace = self._watchdog.grace_s
        cpu = time.thread_time() - cpu0 - (GC_CLOCK.spent(self._slice.thread_id) - self._slice.gc_started)
        if t0 < self._slice.deadline + grace < now and blocked(now - t0, cpu, grace, self._slice.deadline - t0):
            self.blocked_ms = max(self.blocked_ms, (now - self._slice.deadline) * 1000.0)

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, wd, sl = self._coro, self._watchdog, self._slice
        sl.cpu_clock = _thread_cpu_clock()
        sl.thread_id = threading.get_ident()
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                t0, cpu0 = time.monotonic(), time.thread_time()
                sl.started, sl.cpu_started, sl.gc_started = t0, cpu0, GC_CLOCK.spent(sl.thread_id)
                wd.current = sl
                try:
                    if error is not None:
                        step = coro.throw(error)
                    else:
                        step = coro.send(value)
                except StopIteration as stop:
                    self._ended(t0, cpu0)
                    return stop.value
                except BaseException:
                    self._ended(t0, cpu0)
                    raise
                self._ended(t0, cpu0)
                error = None
                try:
                    value = yield step
                except GeneratorExit:
                    raise
                except BaseException as exc:  # cancellation (and anything thrown in) goes to the agent
                    value, error = None, exc
        finally:
            if wd.current is sl:
                wd.current = None
            coro.close()
