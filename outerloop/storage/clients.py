"""Clients by where Redis is (gorse-style: one interface, the backend chosen by URL): a server by
URL, a Redis Cluster through one node's URL, or the embedded ``redis-server``
(:mod:`outerloop.storage.embedded`). :class:`RedisTarget` is the one place clients are made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster

from outerloop.errors import UsageError
from outerloop.storage.embedded import embedded_socket

_LIB_VERSION = redis.__version__

# What every asyncio component is handed (API, daemon, agents, tools): one server or a cluster.
AsyncRedisClient: TypeAlias = "aioredis.Redis | AsyncRedisCluster"
# The blocking client of CLIs, benchmarks, worker processes and the demo.
RedisClient: TypeAlias = "redis.Redis | RedisCluster"


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (scripts cannot be pipelined there)."""
    return isinstance(client, AsyncRedisCluster | RedisCluster)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is: a URL (of a server, or of one node of a Redis Cluster when ``cluster``),
    or the embedded server's data directory."""

    url: str | None = None
    embedded_dir: Path = field(default=Path("runs/redis"))
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.cluster and not self.url:
            raise UsageError("a Redis Cluster target needs the URL of one of its nodes")

    @classmethod
    def from_settings(cls, settings: Any) -> "RedisTarget":
        return cls(url=settings.redis_url, embedded_dir=Path(settings.embedded_redis_dir),
                   cluster=bool(getattr(settings, "redis_cluster", False)) and bool(settings.redis_url))

    def describe(self) -> str:
        if self.url:
            return f"Redis Cluster via {self.url}" if self.cluster else self.url
        return f"embedded redis-server in {self.embedded_dir}"

    def _kwargs(self) -> dict[str, Any]:
        if self.url:
            return {}
        return {"unix_socket_path": embedded_socket(self.embedded_dir)}

    def async_client(self, **options: Any) -> AsyncRedisClient:
        """A new asyncio client (one per event loop; they are cheap and pool connections): a
        ``redis.asyncio.Redis``, or a ``redis.asyncio.cluster.RedisCluster`` for a cluster."""
        # A constant lib_version: otherwise every new connection looks the version up with a
        # blocking importlib.metadata call on the event loop (10-50 ms stalls under load).
        opts = {"decode_responses": False, "health_check_interval": 30, "lib_version": _LIB_VERSION, **options}
        if self.cluster:
            return AsyncRedisCluster.from_url(self.url, **opts)
        if self.url:
            return aioredis.Redis.from_url(self.url, **opts)
        return aioredis.Redis(**self._kwargs(), **opts)

    def sync_client(self, **options: Any) -> RedisClient:
        """A new blocking client, for CLIs, benchmarks and worker processes (``redis.Redis``, or
        ``redis.cluster.RedisCluster`` for a cluster)."""
        opts = {"decode_responses": False, **options}
        if self.cluster:
            return RedisCluster.from_url(self.url, **opts)
        if self.url:
            return redis.Redis.from_url(self.url, **opts)
        return redis.Redis(**self._kwargs(), **opts)


def delete_namespace(target: RedisTarget, prefix: str) -> int:
    """Delete every key under ``prefix`` (and nothing else); returns how many."""
    client = target.sync_client()
    try:
        doomed = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(doomed), 500):
            client.delete(*doomed[i:i + 500])
        return len(doomed)
    finally:
        client.close()


def daemon_async_client(*, url: str | None, embedded_dir: Path | str = Path("runs/redis"), cluster: bool = False,
                        block_ms: int = 1_000) -> AsyncRedisClient:
    """The daemon's client: its socket timeout outlasts a blocking ``XREADGROUP``, and redis-py's
    own retries are off: the daemon's supervisor owns reconnecting (with capped, jittered
    backoff), and a silently retried ``XREADGROUP >`` could deliver entries whose reply was lost,
    which the daemon then re-claims only because it *knows* the connection failed."""
    options: dict[str, Any] = {
        "socket_timeout": block_ms / 1000 + 5.0,
        "socket_connect_timeout": 2.0,
        "retry": Retry(NoBackoff(), 0),
        # redis-py's default (100) raises once exceeded; cycles, readers and sweeps share the pool
        "max_connections": 1024,
    }
    return RedisTarget(url=url, embedded_dir=Path(embedded_dir), cluster=cluster).async_client(**options)
