"""The scheduler daemon: the loops that consume, sweep, dispatch and report, and how they stop.

Every loop runs under one supervisor (:meth:`Daemon._forever`): a Redis outage makes it back off
(capped, jittered) and try again, any other error is logged and the loop goes on. Nothing one
event, one user or one cycle does can stop the daemon; only :meth:`Daemon.stop` does.

Stopping (SIGTERM): readers finish the chunk in hand and read no more (entries read but not
applied stay pending for another consumer), sweeps stop, no new cycle starts, running cycles get
``shutdown_grace_s`` to finish (the rest are cancelled and their triggers handed back), then the
heartbeat is removed. A second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from outerloop.contracts.keys import SchedulerKeys
from outerloop.scheduler.backoff import Backoff
from outerloop.scheduler.consumer import EventSink, StreamConsumer
from outerloop.scheduler.dispatch import REDIS_DOWN, CycleRunner, Dispatcher
from outerloop.scheduler.health import Heartbeat
from outerloop.scheduler.metrics import DaemonMetrics
from outerloop.scheduler.sessionizer import Sessionizer
from outerloop.scheduler.settings import DaemonSettings
from outerloop.scheduler.sweeps import Sweeper
from outerloop.storage.clients import AsyncRedisClient

log = logging.getLogger(__name__)


class Daemon:
    """One scheduler process (run several against the same Redis to share the load)."""

    def __init__(self, *, client: AsyncRedisClient, runner: CycleRunner, keys: SchedulerKeys | None = None,
                 settings: DaemonSettings | None = None, sessionizer: Sessionizer | None = None,
                 metrics: DaemonMetrics | None = None, sink: EventSink | None = None) -> None:
        self.client = client
        self.keys = keys or SchedulerKeys.default()
        self.settings = settings or DaemonSettings()
        self.sessionizer = sessionizer or Sessionizer()
        self.metrics = metrics or DaemonMetrics()
        self._stopping = asyncio.Event()
        self._halted = False
        self._grace_s = self.settings.shutdown_grace_s
        self.dispatcher = Dispatcher(client=client, keys=self.keys, settings=self.settings, runner=runner,
                                     metrics=self.metrics, rules=self.sessionizer.rules)
        self.consumer = StreamConsumer(client=client, keys=self.keys, settings=self.settings,
                                       sessionizer=self.sessionizer, metrics=self.metrics,
                                       on_due=self.dispatcher.notify, stopping=self._stopping, sink=sink)
        self.sweeper = Sweeper(client=client, keys=self.keys, settings=self.settings, sessionizer=self.sessionizer,
                               metrics=self.metrics, on_due=self.dispatcher.notify)
        self.heartbeat = Heartbeat(client=client, keys=self.keys, consumer=self.settings.consumer,
                                   ttl_s=self.settings.heartbeat_ttl_s,
                                   agents=getattr(runner, "agent_names", None))
        self.ready = asyncio.Event()  # set once the groups exist and the loops run

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self, *, grace_s: float | None = None) -> None:
        """Ask for a graceful stop (idempotent); ``grace_s`` overrides the settings' grace."""
        if grace_s is not None:
            self._grace_s = min(self._grace_s, grace_s)
        if not self._stopping.is_set():
            log.info("stopping: no new reads or cycles; %d cycle(s) running", self.dispatcher.running)
            self._stopping.set()
            self.dispatcher.stop_accepting()

    async def run(self) -> None:
        """Run until :meth:`stop`; returns after the graceful stop completed."""
        s = self.settings
        await self._until_ok("prepare", self._prepare)
        if self.stopping:
            return
        log.info("daemon %s consuming %s as group %r (%d shard(s))", s.consumer, ", ".join(self.keys.streams()),
                 self.keys.group, self.keys.shards)
        workers = []
        for shard in range(self.keys.shards):
            workers.append(self._spawn(f"read:{shard}", lambda sh=shard: self.consumer.read(sh), 0.0, reader=True))
            workers.append(self._spawn(f"claim:{shard}", lambda sh=shard: self.consumer.claim_idle(sh),
                                       s.claim_interval_s, reader=True))
        workers.append(self._spawn("sessions", self._sweep_sessions, s.session_sweep_interval_s))
        workers.append(self._spawn("stale", self._sweep_stale, s.stale_sweep_interval_s))
        dispatch = self._spawn("dispatch", self.dispatcher.tick, 0.0, until_drained=True)
        beat = self._spawn("heartbeat", self._beat, s.heartbeat_interval_s, until_drained=True)
        renew = self._spawn("locks", self.dispatcher.renew_locks, s.lock_ttl_s / 3, until_drained=True)
        report = self._spawn("metrics", self._report, s.metrics_interval_s)
        self.ready.set()
        await self._stopping.wait()

        # 1. readers and sweeps: they notice the stop between chunks / reads
        _, stuck = await asyncio.wait(workers + [report], timeout=s.block_ms / 1000 + 10)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*workers, report, return_exceptions=True)
        # 2. running cycles: finish within the grace period, or are cancelled and handed back
        await self.dispatcher.drain(self._grace_s)
        self._halted = True  # (a cancel can be swallowed by wait_for on 3.11: the flag ends the loops)
        for task in (dispatch, beat, renew):
            task.cancel()
        await asyncio.gather(dispatch, beat, renew, return_exceptions=True)
        # 3. not live any more
        try:
            await self.heartbeat.clear()
        except REDIS_DOWN as exc:
            log.warning("could not remove the heartbeat (%s); it expires on its own", exc)
        log.info("stopped: %s", self.metrics.summary_line())

    def _spawn(self, name: str, tick: Callable[[], Awaitable[Any]], interval_s: float, *,
               reader: bool = False, until_drained: bool = False) -> asyncio.Task[None]:
        return asyncio.create_task(self._forever(name, tick, interval_s, reader=reader, until_drained=until_drained),
                                   name=f"daemon:{name}")

    async def _forever(self, name: str, tick: Callable[[], Awaitable[Any]], interval_s: float, *,
                       reader: bool, until_drained: bool) -> None:
        """Run ``tick`` repeatedly until the stop (or, for dispatch/heartbeat, until cancelled)."""
        backoff = Backoff(base_s=self.settings.backoff_base_s, cap_s=self.settings.backoff_cap_s)
        failing = False
        while not self._halted and (until_drained or not self.stopping):
            try:
                await tick()
                if failing:
                    failing = False
                    self.metrics.reconnects += 1
                    log.info("%s: Redis reachable again", name)
                backoff.reset()
            except REDIS_DOWN as exc:
                delay = backoff.next_delay_s()
                if not failing:
                    log.warning("%s: Redis unavailable (%s); retrying with backoff", name, exc)
                failing = True
                if reader:
                    self.consumer.reconnected()
                await self._pause(delay, until_drained)
                continue
            except Exception:  # one failing step never stops the daemon
                log.exception("%s failed; continuing", name)
                await self._pause(backoff.next_delay_s(), until_drained)
                continue
            if interval_s > 0:
                await self._pause(interval_s, until_drained)

    async def _pause(self, seconds: float, ignore_stop: bool) -> None:
        if ignore_stop:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _until_ok(self, name: str, step: Callable[[], Awaitable[Any]]) -> None:
        backoff = Backoff(base_s=self.settings.backoff_base_s, cap_s=self.settings.backoff_cap_s)
        while not self.stopping:
            try:
                await step()
                return
            except REDIS_DOWN as exc:
                log.warning("%s: Redis unavailable (%s); retrying", name, exc)
                await self._pause(backoff.next_delay_s(), False)

    async def _prepare(self) -> None:
        await self.consumer.prepare()
        await self.dispatcher.scripts.load(self.client)
        await self.sweeper.prepare()
        await self._beat()

    async def _sweep_sessions(self) -> None:
        for shard in range(self.keys.shards):
            await self.sweeper.close_idle_sessions(shard)

    async def _sweep_stale(self) -> None:
        for shard in range(self.keys.shards):
            await self.sweeper.trigger_stale_rows(shard)

    async def _beat(self) -> None:
        await self.heartbeat.beat(self.metrics.snapshot())

    async def _report(self) -> None:
        self.metrics.lag, self.metrics.pending = await self.consumer.measure_lag()
        log.info("%s", self.metrics.summary_line())


async def run_until_signalled(daemon: Daemon) -> None:
    """Run ``daemon``; SIGTERM/SIGINT stop it gracefully, a second signal skips the grace period."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if daemon.stopping:
            log.warning("second %s: cancelling running cycles now", signal.Signals(signum).name)
            daemon.stop(grace_s=0)
            daemon.dispatcher.cancel_running()
        else:
            log.info("%s received", signal.Signals(signum).name)
            daemon.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
