"""Where the shared state lives, said once for every process: the Redis URL, whether it is a
Redis Cluster, how many shards the event stream has, and the key namespace.

``outerloop serve``, ``outerloop daemon`` and ``outerloop mcp`` all read it the same way, through
:func:`add_topology_flags` and :func:`topology_from_args`: a flag when given, else the
environment (``OUTERLOOP_REDIS_URL``, ``OUTERLOOP_REDIS_CLUSTER``, ``OUTERLOOP_STREAM_SHARDS``,
``OUTERLOOP_KEY_PREFIX``, ``OUTERLOOP_DURABLE_WRITES``, ``OUTERLOOP_DURABLE_WAIT_MS``, read by
:class:`outerloop.config.Settings`), else the default (the embedded server, no cluster, one
stream, the ``ol`` namespace, no durable writes). Set the environment once for all
three and they cannot disagree: the API writes each event to the stream shard its user hashes
to, and the daemons read exactly those shards.

Durable writes (``--durable-writes``): the API answers 2xx for an event only once Redis ``WAIT 1``
says a replica of each master written has it (stream entry and history), and 503 when none says
so within ``--durable-wait-ms``. The daemon and the MCP server accept the same setting (one
environment for all three) and write as before: it is about what the API's 2xx promises.

Shared structures (``--shared-buckets``): the co-watch graph and the trending counts are keyed
by item, under one hash tag on one server (one slot: what a single server needs nothing more
than) and under ``N`` hash tags on a cluster (an item's edges, and its trending counts, in the
slot of the item's bucket), so they spread over the masters. The default is 1 on one server and
:data:`CLUSTER_SHARED_BUCKETS` on a cluster; every process must agree, which the one setting
ensures (it travels in :meth:`Topology.keys`).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outerloop.contracts.keys import Keys, namespaced_keys, with_shared_buckets
from outerloop.errors import UserInputError
from outerloop.storage.clients import RedisTarget

ENV_VARS = {"redis_url": "OUTERLOOP_REDIS_URL", "cluster": "OUTERLOOP_REDIS_CLUSTER",
            "stream_shards": "OUTERLOOP_STREAM_SHARDS", "key_prefix": "OUTERLOOP_KEY_PREFIX",
            "durable_writes": "OUTERLOOP_DURABLE_WRITES", "durable_wait_ms": "OUTERLOOP_DURABLE_WAIT_MS",
            "shared_buckets": "OUTERLOOP_SHARED_BUCKETS"}
MAX_DURABLE_WAIT_MS = 10_000
MAX_SHARED_BUCKETS = 1024
CLUSTER_SHARED_BUCKETS = 16  # the default on a cluster: a few per master of a 3 to 5 master cluster
_PREFIX = re.compile(r"^[A-Za-z0-9_.\-]+$")  # no ':' (the key separator) and no '{' '}' (hash tags)


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """One deployment's Redis layout. Invalid values raise :class:`UserInputError` naming both
    the flag and the environment variable."""

    redis_url: str | None = None  # None: the embedded redis-server in ``embedded_dir``
    cluster: bool = False  # the URL is one node of a Redis Cluster
    stream_shards: int = 1  # events are spread over this many streams by user hash
    key_prefix: str | None = None  # None: the default namespace (``ol``)
    durable_writes: bool = False  # the API's 2xx waits for a replica (WAIT 1 durable_wait_ms)
    durable_wait_ms: int = 250  # how long the API waits for that replica before answering 503
    shared_buckets: int | None = None  # co-watch/trending hash tags; None: 1 on one server, 16 on a cluster
    embedded_dir: Path = field(default=Path("runs/redis"))

    def __post_init__(self) -> None:
        if isinstance(self.stream_shards, bool) or not isinstance(self.stream_shards, int) or self.stream_shards < 1:
            raise UserInputError(f"--stream-shards ({ENV_VARS['stream_shards']}) must be an integer >= 1, "
                                 f"got {self.stream_shards!r}")
        if self.cluster and not self.redis_url:
            raise UserInputError(f"--cluster ({ENV_VARS['cluster']}) needs --redis-url ({ENV_VARS['redis_url']}): "
                                 "the URL of one node of the cluster (the embedded server is not a cluster)")
        if self.cluster and self.redis_url and self.redis_url.startswith("unix:"):
            raise UserInputError(f"--cluster ({ENV_VARS['cluster']}) needs a redis:// or rediss:// node URL, "
                                 f"got {self.redis_url!r}")
        if (isinstance(self.durable_wait_ms, bool) or not isinstance(self.durable_wait_ms, int)
                or not 1 <= self.durable_wait_ms <= MAX_DURABLE_WAIT_MS):
            raise UserInputError(f"--durable-wait-ms ({ENV_VARS['durable_wait_ms']}) must be an integer from 1 to "
                                 f"{MAX_DURABLE_WAIT_MS}, got {self.durable_wait_ms!r}")
        if self.durable_writes and not self.redis_url:
            raise UserInputError(f"--durable-writes ({ENV_VARS['durable_writes']}) needs --redis-url "
                                 f"({ENV_VARS['redis_url']}): a server with a replica (the embedded server has none, "
                                 "so no write could ever be confirmed)")
        if self.shared_buckets is not None and (
                isinstance(self.shared_buckets, bool) or not isinstance(self.shared_buckets, int)
                or not 1 <= self.shared_buckets <= MAX_SHARED_BUCKETS):
            raise UserInputError(f"--shared-buckets ({ENV_VARS['shared_buckets']}) must be an integer from 1 to "
                                 f"{MAX_SHARED_BUCKETS}, got {self.shared_buckets!r}")
        if self.key_prefix is not None and not _PREFIX.match(self.key_prefix):
            raise UserInputError(f"--key-prefix ({ENV_VARS['key_prefix']}) may hold letters, digits, '_', '.' and "
                                 f"'-' only, got {self.key_prefix!r}")

    @classmethod
    def from_settings(cls, settings: Any) -> "Topology":
        """From :class:`outerloop.config.Settings` (the environment)."""
        return cls(redis_url=settings.redis_url or None, cluster=bool(settings.redis_cluster),
                   stream_shards=_shards(settings.stream_shards, ENV_VARS["stream_shards"]),
                   key_prefix=settings.key_prefix or None,
                   durable_writes=_bool(getattr(settings, "durable_writes", False), ENV_VARS["durable_writes"]),
                   durable_wait_ms=_int(getattr(settings, "durable_wait_ms", 250), ENV_VARS["durable_wait_ms"],
                                        f"an integer from 1 to {MAX_DURABLE_WAIT_MS}"),
                   shared_buckets=_optional_int(getattr(settings, "shared_buckets", None), ENV_VARS["shared_buckets"],
                                                f"an integer from 1 to {MAX_SHARED_BUCKETS}"),
                   embedded_dir=Path(settings.embedded_redis_dir))

    def target(self) -> RedisTarget:
        """Where to connect (a cluster client when ``cluster``)."""
        return RedisTarget(url=self.redis_url, embedded_dir=self.embedded_dir, cluster=self.cluster)

    @property
    def buckets(self) -> int:
        """How many hash tags the shared structures use (the default resolved)."""
        if self.shared_buckets is not None:
            return self.shared_buckets
        return CLUSTER_SHARED_BUCKETS if self.cluster else 1

    def keys(self) -> type[Keys]:
        """The key namespace every process uses (with the shared structures' bucket count)."""
        base = namespaced_keys(self.key_prefix) if self.key_prefix else Keys
        return with_shared_buckets(base, self.buckets, tagged=self.cluster)

    def describe(self) -> str:
        shards = f"{self.stream_shards} stream shard{'s' if self.stream_shards > 1 else ''}"
        durable = f", durable writes (WAIT 1 {self.durable_wait_ms} ms)" if self.durable_writes else ""
        shared = f", co-watch and trending over {self.buckets} hash tags" if self.buckets > 1 else ""
        return f"{self.target().describe()}, {shards}, keys under {self.keys().prefix!r}{durable}{shared}"

    def env(self) -> dict[str, str]:
        """The environment that makes a child ``outerloop`` process read this same topology."""
        out = {ENV_VARS["cluster"]: "1" if self.cluster else "0", ENV_VARS["stream_shards"]: str(self.stream_shards),
               ENV_VARS["key_prefix"]: self.key_prefix or "", "OUTERLOOP_EMBEDDED_REDIS_DIR": str(self.embedded_dir),
               ENV_VARS["durable_writes"]: "1" if self.durable_writes else "0",
               ENV_VARS["durable_wait_ms"]: str(self.durable_wait_ms),
               ENV_VARS["shared_buckets"]: "" if self.shared_buckets is None else str(self.shared_buckets)}
        if self.redis_url:
            out[ENV_VARS["redis_url"]] = self.redis_url
        return out


def _shards(value: Any, name: str) -> int:
    return _int(value, name, "an integer >= 1")


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise UserInputError(f"{name} must be 1/true/yes/on or 0/false/no/off, got {value!r}")


def _int(value: Any, name: str, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be {what}, got {value!r}") from None


def _optional_int(value: Any, name: str, what: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _int(value, name, what)


def add_topology_flags(parser: Any) -> None:
    """``--redis-url``, ``--cluster``/``--no-cluster``, ``--stream-shards``, ``--key-prefix`` on a
    parser or argument group. Each defaults to the environment (see the module docstring)."""
    parser.add_argument("--redis-url", default=None,
                        help=f"redis://, rediss:// or unix:// URL (default: {ENV_VARS['redis_url']}, else the "
                             "embedded server)")
    parser.add_argument("--cluster", action=argparse.BooleanOptionalAction, default=None,
                        help=f"the URL is one node of a Redis Cluster (default: {ENV_VARS['cluster']}, else no)")
    parser.add_argument("--stream-shards", type=_shard_flag, default=None,
                        help=f"events are spread over N streams by user hash (default: {ENV_VARS['stream_shards']}, "
                             "else 1); serve, daemon and mcp must agree")
    parser.add_argument("--key-prefix", default=None,
                        help=f"namespace for every Redis key (default: {ENV_VARS['key_prefix']}, else 'ol'); "
                             "isolated deployments, tests")
    parser.add_argument("--durable-writes", action=argparse.BooleanOptionalAction, default=None,
                        help="the API acknowledges an event (2xx) only once WAIT 1 says a replica has it, else "
                             f"answers 503 (default: {ENV_VARS['durable_writes']}, else no)")
    parser.add_argument("--durable-wait-ms", type=_wait_flag, default=None, metavar="MS",
                        help=f"how long a durable write waits for the replica (default: {ENV_VARS['durable_wait_ms']}"
                             f", else 250; 1 to {MAX_DURABLE_WAIT_MS})")
    parser.add_argument("--shared-buckets", type=_buckets_flag, default=None, metavar="N",
                        help="hash tags the co-watch graph and trending counts are spread over, by item (default: "
                             f"{ENV_VARS['shared_buckets']}, else 1 on one server and {CLUSTER_SHARED_BUCKETS} on a "
                             f"cluster; 1 to {MAX_SHARED_BUCKETS}); serve, daemon and mcp must agree")


def _shard_flag(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None


def _buckets_flag(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_SHARED_BUCKETS}, got {text!r}") from None


def _wait_flag(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_DURABLE_WAIT_MS}, got {text!r}") from None


def topology_from_args(args: argparse.Namespace, settings: Any = None) -> Topology:
    """The topology: each flag given on ``args`` wins over the environment's value."""
    if settings is None:
        from outerloop.config import get_settings

        settings = get_settings()
    base = Topology.from_settings(settings)
    flag = {name: getattr(args, name, None) for name in ("redis_url", "cluster", "stream_shards", "key_prefix",
                                                          "durable_writes", "durable_wait_ms", "shared_buckets")}
    if flag["stream_shards"] is not None and flag["stream_shards"] < 1:
        raise UserInputError(f"--stream-shards must be >= 1, got {flag['stream_shards']}")
    return Topology(
        redis_url=flag["redis_url"] or base.redis_url,
        cluster=base.cluster if flag["cluster"] is None else bool(flag["cluster"]),
        stream_shards=base.stream_shards if flag["stream_shards"] is None else flag["stream_shards"],
        key_prefix=flag["key_prefix"] or base.key_prefix,
        durable_writes=base.durable_writes if flag["durable_writes"] is None else bool(flag["durable_writes"]),
        durable_wait_ms=base.durable_wait_ms if flag["durable_wait_ms"] is None else flag["durable_wait_ms"],
        shared_buckets=base.shared_buckets if flag["shared_buckets"] is None else flag["shared_buckets"],
        embedded_dir=base.embedded_dir,
    )

