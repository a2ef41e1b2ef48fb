"""The scheduler's Redis keys: the event stream(s), the dead-letter stream and the few
scheduler-wide indexes (due users, open sessions, watermark, heartbeats).

Per-user keys always go through :meth:`outerloop.storage.Keys.user`, so on Redis Cluster a
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
from outerloop.storage import Keys, namespaced_keys


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
        """Every key under ``prefix`` (see :func:`outerloop.storage.namespaced_keys`)."""
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
