"""The daemon's asyncio Redis client: standalone (URL or embedded) or Redis Cluster.

redis-py's own retries are turned off: the daemon's supervisor owns reconnecting (with capped,
jittered backoff), and a silently retried ``XREADGROUP >`` could deliver entries whose reply
was lost, which the daemon then re-claims only because it *knows* the connection failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from outerloop.storage.embedded import RedisTarget


def async_client(*, url: str | None, embedded_dir: Path | str = Path("runs/redis"), cluster: bool = False,
                 block_ms: int = 1_000) -> Any:
    """A client whose socket timeout outlasts a blocking ``XREADGROUP``."""
    options: dict[str, Any] = {
        "socket_timeout": block_ms / 1000 + 5.0,
        "socket_connect_timeout": 2.0,
        "retry": Retry(NoBackoff(), 0),
        # redis-py's default (100) raises once exceeded; cycles, readers and sweeps share the pool
        "max_connections": 1024,
    }
    return RedisTarget(url=url, embedded_dir=Path(embedded_dir), cluster=cluster).async_client(**options)
