"""The heartbeat that says a daemon is alive, and the check behind ``outerloop daemon --check``.

Each daemon refreshes its own key with a TTL; a daemon that hangs or dies simply stops
refreshing and the key expires, so the check needs no clean shutdown to be right. A ZSET of
consumers (score = last beat) lets the check find daemons without SCAN (which a cluster would
have to run on every node).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from outerloop.clock import now_ms
from outerloop.contracts.keys import SchedulerKeys
from outerloop.storage.clients import AsyncRedisClient


class Heartbeat:
    def __init__(self, *, client: AsyncRedisClient, keys: SchedulerKeys, consumer: str, ttl_s: float,
                 agents: list[str] | None = None) -> None:
        self.client = client
        self.agents = agents  # the agents this daemon runs (the API checks refresh requests against them)
        self.keys = keys
        self.consumer = consumer
        self.ttl_ms = int(ttl_s * 1000)
        self.started_ms = now_ms()

    async def beat(self, stats: dict[str, Any]) -> None:
        now = now_ms()
        value = json.dumps({"consumer": self.consumer, "pid": os.getpid(), "host": socket.gethostname(),
                            "started_ms": self.started_ms, "beat_ms": now, "stats": stats,
                            **({"agents": self.agents} if self.agents is not None else {})})
        await self.client.set(self.keys.heartbeat(self.consumer), value, px=self.ttl_ms)
        await self.client.zadd(self.keys.heartbeats(), {self.consumer: now})
        # forget daemons whose heartbeat stopped long ago
        await self.client.zremrangebyscore(self.keys.heartbeats(), "-inf", now - 100 * self.ttl_ms)

    async def clear(self) -> None:
        """A daemon that stopped cleanly is not live any more."""
        await self.client.delete(self.keys.heartbeat(self.consumer))
        await self.client.zrem(self.keys.heartbeats(), self.consumer)


async def live_daemons(client: AsyncRedisClient, keys: SchedulerKeys, consumer: str | None = None) -> list[dict[str, Any]]:
    """Heartbeats that have not expired (of one consumer, or of all)."""
    if consumer is not None:
        names = [consumer]
    else:
        names = [c.decode() if isinstance(c, bytes) else c for c in await client.zrange(keys.heartbeats(), 0, -1)]
    live = []
    for name in names:
        raw = await client.get(keys.heartbeat(name))
        if raw is not None:
            live.append(json.loads(raw))
    return live
