"""Every Redis key outerloop uses: :class:`Keys` (the user's keys, hash-tagged by user, and
the streams) and :class:`SchedulerKeys` (the event stream shards, the dead-letter stream and
the few scheduler-wide indexes: due users, open sessions, watermark, heartbeats).

Per-user keys always go through :meth:`Keys.user`, so on Redis Cluster a
user's keys share one slot and the Lua scripts that touch them are legal. The scheduler-wide
keys of shard ``i`` carry the hash tag ``{s<i>}`` when the stream is sharded, so each shard's
stream and indexes live together and different shards spread over the cluster (the cycle
journal's per-cycle keys too: :mod:`outerloop.scheduler.journal`). On a cluster no script mixes
a user's keys with a shard's: the daemon queues users and indexes sessions in separate
single-key commands there (on one server the scripts do it inline). What stays one key, and
why: :attr:`SchedulerKeys.dead_letter`, :meth:`SchedulerKeys.heartbeats`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from outerloop.errors import UsageError


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
        """SET of event ids already applied to the user's history (idempotency under at-least-once
        delivery). One of three records per event, each kept with the effect it guards because the
        three effects are written at different times in different slots: this one by the API's
        history script (the user's slot, before any daemon sees the event); the scheduler's
        (:meth:`SchedulerKeys.applied`) by the sessionizer's script, with the session and trigger
        effect; the co-watch graph's (:meth:`cowatch_applied`) next to edges that live under
        item hash tags, outside the user's slot, so no script of the user's can write them."""
        return cls.user(user_id, "applied")

    events_stream = "ol:events"
    dead_letter_stream = "ol:events:dead"

    # -- the shared structures: the co-watch graph and the trending counts (tools.builtin) -------
    # Shared by every user, so not under a user's hash tag: spread by item over
    # ``shared_buckets`` hash tags (one on one server).

    @classmethod
    def shared_bucket(cls, item_id: int) -> int:
        """The bucket (hash tag) of an item's shared keys: 0 with one bucket, else crc32 of the id."""
        return 0 if cls.shared_buckets <= 1 else zlib.crc32(str(int(item_id)).encode()) % cls.shared_buckets

    @classmethod
    def cowatch_item(cls, item_id: int) -> str:
        """ZSET neighbour -> co-watch weight of one item. One hash tag for every item's edges (the
        neighbour merge is one script), or one per item bucket (one script per bucket touched)."""
        tag = "cw" if cls.shared_buckets <= 1 else f"cw.{cls.shared_bucket(item_id)}"
        return f"{cls.prefix}:cw:{{{tag}}}:i:{item_id}"

    @classmethod
    def cowatch_recent(cls, user_id: str) -> str:
        """ZSET item -> last time (ms): the user's recent items a new event links to."""
        return cls.user(user_id, "cw_recent")

    @classmethod
    def cowatch_device(cls, device: str) -> str:
        """ZSET item -> last time (ms): a device's recent items (household edges)."""
        return f"{cls.prefix}:cw:d:{device}"

    @classmethod
    def cowatch_applied(cls, event_id: str) -> str:
        """Marks an event whose edges are linked (at most once under redelivery): the edges live
        under item hash tags, so the user's own applied sets (written by scripts in the user's
        slot, see :meth:`applied_events`) cannot guard them."""
        return f"{cls.prefix}:cw:ev:{event_id}"

    @classmethod
    def trending(cls) -> str:
        """ZSET item -> decayed engagement, overall, with one untagged bucket (one server)."""
        return f"{cls.prefix}:trend"

    @classmethod
    def trending_epoch(cls) -> str:
        """The trending epoch (with buckets: the one each bucket's own epoch starts from)."""
        return f"{cls.prefix}:trend:epoch"

    @classmethod
    def trending_genre(cls, genre: str) -> str:
        """ZSET item -> decayed engagement within one genre (one untagged bucket)."""
        return f"{cls.trending()}:g:{genre}"

    @classmethod
    def trending_bucket(cls, bucket: int) -> str:
        """:meth:`trending` of one bucket, under the bucket's hash tag (with :meth:`trending_bucket_genre`
        and :meth:`trending_bucket_epoch`, so a bucket's rebase is one single-slot script)."""
        return f"{cls.prefix}:trend:{{tr.{bucket}}}"

    @classmethod
    def trending_bucket_genre(cls, bucket: int, genre: str) -> str:
        return f"{cls.trending_bucket(bucket)}:g:{genre}"

    @classmethod
    def trending_bucket_epoch(cls, bucket: int) -> str:
        return f"{cls.trending_bucket(bucket)}:epoch"


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


def shard_of(user_id: str, shards: int) -> int:
    """The stream shard a user's events go to (stable across processes and machines)."""
    if shards <= 1:
        return 0
    return zlib.crc32(user_id.encode("utf-8")) % shards


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerKeys:
    """Names of the stream and scheduler keys over one :class:`Keys` namespace (``base``), the
    same class the API and the outer loop are given. Nothing global is changed to namespace.

    ``shards == 1`` keeps the plain stream name (``base.events_stream``); the API writes each
    event to ``stream_for_user`` with the same shard count (see :meth:`for_topology`).
    """

    base: type[Keys] = Keys
    group: str = "outerloop-daemon"
    shards: int = 1

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise UsageError(f"stream shards must be >= 1, got {self.shards}")

    @classmethod
    def default(cls, *, shards: int = 1, group: str = "outerloop-daemon") -> "SchedulerKeys":
        """The default namespace (``Keys``)."""
        return cls(base=Keys, group=group, shards=shards)

    @classmethod
    def for_topology(cls, topology: Any, *, group: str = "outerloop-daemon") -> "SchedulerKeys":
        """The namespace and stream shards of an :class:`outerloop.topology.Topology` (what the
        API writes to, so a daemon built from the same topology reads every event)."""
        return cls(base=topology.keys(), group=group, shards=topology.stream_shards)

    @classmethod
    def with_prefix(cls, prefix: str, *, shards: int = 1, group: str = "outerloop-daemon") -> "SchedulerKeys":
        """Every key under ``prefix`` (see :func:`namespaced_keys`)."""
        return cls(base=namespaced_keys(prefix), group=group, shards=shards)

    @property
    def stream_base(self) -> str:
        return self.base.events_stream

    @property
    def dead_letter(self) -> str:
        """The dead-letter stream: entries that could not be applied, with the reason. One key
        for every shard, on purpose: it is written only for entries that fail (malformed, past
        their deliveries, trimmed), never per event, and an operator reads it in one place."""
        return self.base.dead_letter_stream

    @property
    def namespace(self) -> str:
        return f"{self.base.prefix}:sched"

    def _tag(self, shard: int) -> str:
        if not 0 <= shard < self.shards:
            raise UsageError(f"shard {shard} out of range 0..{self.shards - 1}")
        return "" if self.shards == 1 else f":{{s{shard}}}"

    def stream(self, shard: int = 0) -> str:
        """The event stream of ``shard`` (the API XADDs here; see ``stream_for_user``)."""
        return f"{self.stream_base}{self._tag(shard)}"

    def stream_for_user(self, user_id: str) -> str:
        return self.stream(shard_of(user_id, self.shards))

    def streams(self) -> list[str]:
        return [self.stream(i) for i in range(self.shards)]

    def due(self, shard: int) -> str:
        """ZSET user -> time (ms) from which the user's pending triggers may run."""
        return f"{self.namespace}{self._tag(shard)}:due"

    def open_sessions(self, shard: int) -> str:
        """ZSET user -> last event time (ms) of the user's open session (idle-close sweep)."""
        return f"{self.namespace}{self._tag(shard)}:open"

    def watermark(self, shard: int) -> str:
        """The largest event time (ms) seen on the shard; minus the lateness allowance it is
        the event-time clock that closes idle sessions."""
        return f"{self.namespace}{self._tag(shard)}:maxts"

    def refresh_due(self, shard: int) -> str:
        """ZSET user -> time (ms) when the user's rows go stale (stale-row sweep)."""
        return f"{self.namespace}{self._tag(shard)}:stale"

    def heartbeat(self, consumer: str) -> str:
        """A live daemon's heartbeat (expires on its own when the daemon stops refreshing)."""
        return f"{self.namespace}:hb:{consumer}"

    def heartbeats(self) -> str:
        """ZSET consumer -> last heartbeat (ms), so ``--check`` can find daemons without SCAN
        (which a cluster would need on every master). One key, on purpose: each daemon writes it
        once per heartbeat interval, whatever the traffic, and it is the one place to find them."""
        return f"{self.namespace}:hb"

    def followers(self, series_id: str) -> str:
        """SET of users following a series (fans an ``episode_release`` out to them)."""
        return f"{self.namespace}:series:{{{series_id}}}:followers"

    # Per-user keys (all hash-tagged through Keys.user, so a user's keys share one slot).
    def user(self, user_id: str, what: str) -> str:
        return self.base.user(user_id, what)

    def rows(self, user_id: str) -> str:
        return self.base.rows(user_id)

    def history(self, user_id: str) -> str:
        return self.base.history(user_id)

    def applied(self, user_id: str) -> str:
        """SET of event ids whose scheduler effect is applied. Not ``Keys.applied_events``: the
        API marks events there when it applies history, before the daemon sees them."""
        return self.base.user(user_id, "sched_applied")

    def session_events(self, user_id: str, which: str) -> str:
        """LIST of the open session's most recent events (JSON); ``which`` is c(urrent)/p(revious)."""
        return self.base.user(user_id, f"sess_ev_{which}")

    def counters(self, user_id: str) -> str:
        """HASH of per-user event counters (``events``, ``late``, ``type:<type>``)."""
        return self.base.user(user_id, "counters")

    def session_state(self, user_id: str) -> str:
        """HASH of the sessionizer's state (current and previous open session, max event time)."""
        return self.base.user(user_id, "sess")

    def sessions(self, user_id: str) -> str:
        """LIST of closed-session records (JSON), newest last, capped."""
        return self.base.user(user_id, "sessions")

    def follows(self, user_id: str) -> str:
        """SET of series ids the user follows (watched or listed an episode of)."""
        return self.base.user(user_id, "follows")

    def profile(self, user_id: str) -> str:
        """HASH of profile fields the scheduler reads (``utc_offset_min``)."""
        return self.base.profile(user_id)

    def pending_triggers(self, user_id: str) -> list[str]:
        """Triggers waiting for the user's next cycle (coalesced): a HASH (per name: count,
        first/last time, detail) and LISTs of source event ids and source events."""
        return [self.base.user(user_id, "trig"), self.base.user(user_id, "trig_ids"),
                self.base.user(user_id, "trig_ev")]

    def inflight_triggers(self, user_id: str) -> list[str]:
        """The triggers the running (or a crashed) cycle took, in the same three keys."""
        return [self.base.user(user_id, "trig_run"), self.base.user(user_id, "trig_run_ids"),
                self.base.user(user_id, "trig_run_ev")]

    def trace_links(self, user_id: str) -> str:
        """LIST of ``traceparent``s of events applied for the user and not yet linked from a cycle
        span (``telemetry.TraceLinks``; written only when telemetry is on)."""
        return self.base.user(user_id, "trace")

    def cycle_lock(self, user_id: str) -> str:
        """At most one cycle per user across all daemons: SET NX PX with a random token."""
        return self.base.user(user_id, "cycle_lock")


def window_key(user_id: str, keys: type[Keys]) -> str:
    """HASH row_id -> the user's recent RowStats JSON (the drift window)."""
    return keys.user(user_id, "eval_window")


def baseline_key(keys: type[Keys], row_id: str) -> str:
    """HASH of one row's long-run counts over all users (the drift baseline)."""
    return f"{keys.prefix}:eval:base:{row_id}"


def embedding_key(user_id: str, keys: type[Keys] = Keys) -> str:
    """Cached user vector: ``b"<history fingerprint>|<model_version>|"`` + float32 bytes."""
    return keys.user(user_id, "emb")


def served_key(user_id: str, request_id: str, keys: type[Keys] = Keys) -> str:
    """What one recommendation response showed (JSON, with a TTL), for attributing feedback."""
    return keys.user(user_id, f"served:{request_id}")


def precomputed_key(user_id: str, keys: type[Keys] = Keys) -> str:
    """A batch-precomputed list (``b"id,id,..."``): the Gorse-style baseline the bench compares."""
    return keys.user(user_id, "precomputed")


def control_key(keys: type[Keys]) -> str:
    """HASH ``<agent>|paused`` / ``<agent>|budget`` -> JSON."""
    return f"{keys.prefix}:{{control}}:agents"


def control_log_key(keys: type[Keys]) -> str:
    """STREAM of every change: agent, action, value, by, source, at_ms."""
    return f"{keys.prefix}:{{control}}:log"


def user_journal_key(keys: type[Keys], user_id: str) -> str:
    return keys.user(user_id, "journal")


def _journal_tag(shard: int, shards: int) -> str:
    """The shard's hash tag (as :meth:`SchedulerKeys.stream`'s), none with one shard: the
    journal's per-cycle keys of shard ``i`` live in the slot of the shard's stream and indexes,
    so a shard's scheduler load is one unit to place on a node."""
    if not 0 <= shard < max(shards, 1):
        raise ValueError(f"shard {shard} out of range 0..{shards - 1}")
    return "" if shards <= 1 else f":{{s{shard}}}"


def runs_key(keys: type[Keys], shard: int = 0, shards: int = 1) -> str:
    """STREAM of the cycles of the users of ``shard`` (one stream with one shard)."""
    return f"{keys.prefix}:journal{_journal_tag(shard, shards)}:runs"


def counts_key(keys: type[Keys], shard: int = 0, shards: int = 1) -> str:
    """HASH ``agent|outcome`` -> runs since the start, of the users of ``shard``."""
    return f"{keys.prefix}:journal{_journal_tag(shard, shards)}:counts"


def minute_key(keys: type[Keys], minute: int, shard: int = 0, shards: int = 1) -> str:
    """Runs by ``agent|outcome`` in one minute (``minute`` = epoch ms // 60,000), of ``shard``."""
    return f"{keys.prefix}:journal{_journal_tag(shard, shards)}:m:{minute}"


def runs_keys(keys: type[Keys], shards: int) -> list[str]:
    """Every shard's runs stream (what the console merges)."""
    return [runs_key(keys, i, shards) for i in range(max(shards, 1))]


def counts_keys(keys: type[Keys], shards: int) -> list[str]:
    """Every shard's counts hash (the console sums them)."""
    return [counts_key(keys, i, shards) for i in range(max(shards, 1))]


def minute_keys(keys: type[Keys], minute: int, shards: int) -> list[str]:
    """Every shard's hash of one minute (the console sums them)."""
    return [minute_key(keys, minute, i, shards) for i in range(max(shards, 1))]


def daemons_key(keys: type[Keys]) -> str:
    """One HASH for every daemon, not spread by shard: written at most once a second per daemon,
    and it is where the console learns the shard count that names every other journal key
    (:mod:`outerloop.scheduler.journal`)."""
    return f"{keys.prefix}:journal:daemons"
