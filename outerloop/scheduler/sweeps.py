"""Time-based work: closing sessions the event-time clock has left idle, and re-triggering users
whose rows went stale. Both only queue triggers; the dispatcher runs the cycles.

The idle sweep reads the shard's event-time clock (largest event time seen minus the lateness
allowance), not the wall clock: replays and backfills close sessions exactly as live traffic
would. Index entries are removed only if their score is unchanged, so an event that extended a
session between the sweep's read and its removal keeps the session indexed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from outerloop.clock import now_ms
from outerloop.contracts.keys import SchedulerKeys
from outerloop.contracts.triggers import SWEEP
from outerloop.scheduler.dispatch import fire_args, fire_keys
from outerloop.scheduler.metrics import DaemonMetrics
from outerloop.scheduler.sessionizer import CloseResult, Sessionizer
from outerloop.scheduler.settings import DaemonSettings
from outerloop.scheduler.triggers import LUA_FIRE
from outerloop.storage.clients import AsyncRedisClient
from outerloop.storage.scripts import LuaScript, ScriptSet, lua_source

log = logging.getLogger(__name__)

# KEYS: zset   ARGV: member, score
ZREM_IF_SCORE_LUA = lua_source("zrem_if_score")

SWEEP_BATCH = 500


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Sweeper:
    """The two sweeps of one daemon (several daemons may sweep the same shard: every step is
    idempotent or conditional, and duplicate triggers coalesce)."""

    def __init__(self, *, client: AsyncRedisClient, keys: SchedulerKeys, settings: DaemonSettings, sessionizer: Sessionizer,
                 metrics: DaemonMetrics, on_due: Callable[[], None]) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.sessionizer = sessionizer
        self.metrics = metrics
        self.on_due = on_due
        _, close_script = sessionizer.scripts()
        self.scripts = ScriptSet(close_script, LuaScript("zrem_if", ZREM_IF_SCORE_LUA), LuaScript("fire", LUA_FIRE))

    async def prepare(self) -> None:
        await self.scripts.load(self.client)

    async def close_idle_sessions(self, shard: int) -> int:
        """Close sessions whose last event is ``gap`` behind the shard's event-time watermark."""
        raw = await self.client.get(self.keys.watermark(shard))
        if raw is None:
            return 0
        watermark = int(raw) - self.sessionizer.sessions.lateness_ms
        horizon = watermark - self.sessionizer.sessions.gap_ms
        index = self.keys.open_sessions(shard)
        rows = await self.client.zrangebyscore(index, "-inf", horizon, start=0, num=SWEEP_BATCH, withscores=True)
        if not rows:
            return 0
        now = now_ms()
        users = [(_text(member), int(score)) for member, score in rows]
        calls = [self.sessionizer.close_idle_call(self.keys, user, watermark, now) for user, _ in users]
        replies = await self._many("close_idle", calls)
        closed = 0
        gone: list[tuple[list[str], list[Any]]] = []
        still_open: dict[str, int] = {}
        due: dict[str, int] = {}
        for (user, score), reply in zip(users, replies):
            if isinstance(reply, Exception):
                log.warning("closing the idle session of %s failed: %s", user, reply)
                continue
            res = CloseResult.from_reply(reply)
            closed += res.closed
            self.metrics.sessions_closed += res.closed
            self.metrics.triggers_fired += res.triggers_fired
            if res.open_session_last_ts is None:
                gone.append(([index], [user, score]))  # only if no event moved it meanwhile
            else:
                still_open[user] = res.open_session_last_ts
            if res.has_pending_triggers:
                due[user] = now
        await self._many("zrem_if", gone)
        if still_open or due:
            pipe = self.client.pipeline(transaction=False)
            if still_open:
                pipe.zadd(index, still_open)
            if due:
                pipe.zadd(self.keys.due(shard), due, nx=True)
            await pipe.execute()
        if due:
            self.on_due()
        return closed

    async def _many(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        return await self.scripts.call_many(self.client, name, calls)

    async def trigger_stale_rows(self, shard: int) -> int:
        """Queue a ``sweep`` trigger for users whose rows expired (scheduled after each cycle)."""
        now = now_ms()
        index = self.keys.refresh_due(shard)
        users = [_text(u) for u in await self.client.zrangebyscore(index, "-inf", now, start=0, num=SWEEP_BATCH)]
        if not users:
            return 0
        args = fire_args(SWEEP, now, {"swept_at_ms": now}, self.sessionizer.rules)
        for user, reply in zip(users, await self._many("fire", [(fire_keys(self.keys, u), args) for u in users])):
            if isinstance(reply, Exception):
                log.warning("queueing the stale-row sweep of %s failed: %s", user, reply)
        # not again before a cycle ran (which reschedules it) or the minimum interval passed
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(index, {u: now + int(self.settings.min_refresh_interval_s * 1000) for u in users})
        pipe.zadd(self.keys.due(shard), {u: now for u in users}, nx=True)
        await pipe.execute()
        self.metrics.triggers_fired += len(users)
        self.on_due()
        return len(users)
