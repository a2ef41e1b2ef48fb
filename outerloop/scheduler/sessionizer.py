"""The per-user sessionizer and the event effect, as one Lua script per event.

Why Lua: the effect of an event (counters, follows, session state, triggers) and its "applied"
marker must change together, or a redelivered event would be applied twice and a crash between
two writes would lose half an effect. All keys are the user's (hash-tagged), so the script is
legal on Redis Cluster. Session state lives in Redis, never only in the daemon's memory, so a
crash loses nothing.

Sessions follow event time. A session closes after ``gap_ms`` (30 min) without activity. Events
may arrive out of order by up to ``lateness_ms`` (5 s, the watermark): the sessionizer keeps the
current session and the one before it open until the user's watermark (largest event time minus
``lateness_ms``) has passed their end plus the gap, so an out-of-order event can still join or
bridge them. An event older than the watermark (or inside an already closed session) is *late*:
it is applied and counted (``late`` counter, the session's ``late`` count when it falls inside an
open session) and never decides a session boundary; it is never dropped. A user who goes quiet
has their session closed by the idle sweep, which uses the shard's event-time clock.

A title being watched is activity too: a ``play`` holds the session open until the title's
runtime has passed (its ``hold``), so a two-hour film between a ``play`` and its ``finish`` stays
one session; a ``pause``, ``skip`` or ``finish`` ends the hold. The gap counts from the later of
the last event and the hold (a session's *horizon*); a session's recorded end stays its last event.
The idle sweep's index of open sessions holds each user's horizon and may go down (a pause ends a
hold). A score that is too low, e.g. written by a slower consumer, costs one idle-close call that
finds the session still open (the script decides on the user's state, never on the index).

Catalog events (``episode_release``) are not user activity: they never open or extend a session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from outerloop.contracts.events import Event
from outerloop.contracts.keys import SchedulerKeys
from outerloop.contracts.triggers import WATCH_TYPES, TriggerRules
from outerloop.scheduler.triggers import LUA_TRIGGERS, ItemLookup, no_item_info
from outerloop.storage.scripts import LuaScript, lua_source

# Session helpers both scripts share. Session fields are stored flat in the state hash, prefixed
# 'c_' (current) and 'p_' (previous, waiting for the watermark to pass its end); each session's
# most recent events are in its own list (cfg.ev.c / cfg.ev.p).
_LUA_SESSIONS = lua_source("sessions")

# The settings are baked into the script text (see :meth:`Sessionizer.scripts`), so each call
# sends only what differs per event.
_LUA_CONSTANTS = "--@CONSTANTS"

# KEYS: 1 applied, 2 counters, 3 sess, 4 sessions, 5 trig, 6 follows, 7 profile, 8 sess_ev_c,
#       9 sess_ev_p, 10 trig_ids, 11 trig_ev [, 12 due queue, 13 open-sessions index]
# ARGV: 1 event_id, 2 ts, 3 type, 4 item_id|'', 5 series_id|'', 6 dark 0/1, 7 watch 0/1,
#       8 in_session 0/1, 9 now_ms, 10 event JSON, 11 runtime_ms (0 = unknown) [, 12 user]
# With the two indexes (one server only: they are not in the user's slot) the script also
# queues the user when triggers are pending and indexes the open session, also on a
# redelivery (a crash may have come between the effect and the indexes).
# Returns {applied 1/0, has_pending 1/0, open_last_ts|-1, late 1/0, closed, fired, follow 1/0}
# (follow: the user newly follows the event's series, or follows it and this is a redelivery:
# the caller adds the user to the series' followers, a key in another slot)
APPLY_EVENT_LUA = _LUA_CONSTANTS + LUA_TRIGGERS + _LUA_SESSIONS + lua_source("sessionizer_apply")

# Close the user's sessions whose end plus the gap the event-time clock has passed.
# KEYS: 1 counters, 2 sess, 3 sessions, 4 trig, 5 profile, 6 sess_ev_c, 7 sess_ev_p, 8 trig_ids,
#       9 trig_ev
# ARGV: 1 watermark_ms, 2 now_ms
# Returns {closed, open_last_ts|-1, has_pending 1/0, fired}
CLOSE_IDLE_LUA = _LUA_CONSTANTS + LUA_TRIGGERS + _LUA_SESSIONS + lua_source("sessionizer_close_idle")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSettings:
    """Sessionizer thresholds (event time)."""

    gap_ms: int = 30 * 60 * 1000
    lateness_ms: int = 5_000  # the watermark: how far out of order an event may arrive
    sessions_cap: int = 100  # closed-session records kept per user
    applied_ttl_s: int = 14 * 24 * 3600  # how long event ids are remembered for de-duplication


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying one event did (as the script reported it)."""

    applied: bool  # False: a redelivery of an event already applied (no effect this time)
    has_pending_triggers: bool
    open_session_last_ts: int | None
    late: bool
    sessions_closed: int
    triggers_fired: int
    index_follow: bool  # add the user to the series' followers (idempotent)

    @classmethod
    def from_reply(cls, reply: list[Any]) -> "ApplyResult":
        last = int(reply[2])
        return cls(bool(int(reply[0])), bool(int(reply[1])), None if last < 0 else last,
                   bool(int(reply[3])), int(reply[4]), int(reply[5]), bool(int(reply[6])))


@dataclass(frozen=True, slots=True)
class CloseResult:
    closed: int
    open_session_last_ts: int | None
    has_pending_triggers: bool
    triggers_fired: int

    @classmethod
    def from_reply(cls, reply: list[Any]) -> "CloseResult":
        last = int(reply[1])
        return cls(int(reply[0]), None if last < 0 else last, bool(int(reply[2])), int(reply[3]))


class Sessionizer:
    """Builds the per-event and idle-close script calls; the scripts do the work atomically."""

    def __init__(self, *, sessions: SessionSettings | None = None, rules: TriggerRules | None = None,
                 items: ItemLookup = no_item_info) -> None:
        self.sessions = sessions or SessionSettings()
        self.rules = rules or TriggerRules()
        self.items = items

    def _constants(self) -> str:
        s, r = self.sessions, self.rules
        return "\n".join([
            f"local C_GAP = {int(s.gap_ms)}", f"local C_LATENESS = {int(s.lateness_ms)}",
            f"local C_CAP = {int(s.sessions_cap)}", f"local C_APPLIED_TTL = {int(s.applied_ttl_s)}",
            f"local C_MAX_IDS = {int(r.max_event_ids)}", f"local C_MAX_EVENTS = {int(r.max_events)}",
            f"local C_ACTIVITY = {'true' if r.on_activity else 'false'}",
            f"local C_LN_START = {int(r.late_night_start_hour)}", f"local C_LN_END = {int(r.late_night_end_hour)}",
        ])

    def scripts(self) -> tuple[LuaScript, LuaScript]:
        """The apply and idle-close scripts with this sessionizer's settings baked in."""
        constants = self._constants()
        return (LuaScript("apply", APPLY_EVENT_LUA.replace(_LUA_CONSTANTS, constants, 1)),
                LuaScript("close_idle", CLOSE_IDLE_LUA.replace(_LUA_CONSTANTS, constants, 1)))

    def series_of(self, event: Event) -> str | None:
        info = self.items(event.item_id) if event.item_id is not None else None
        return info.series_id if info else None

    def apply_call(self, keys: SchedulerKeys, event: Event, now_ms: int, event_json: str | bytes | None = None,
                   shard: int | None = None) -> tuple[list[str], list[Any]]:
        """(keys, args) for the apply script; ``event_json`` is the entry's JSON if at hand.
        ``shard``: also update that shard's queue and session index (one server only)."""
        k, u = keys, event.user_id
        info = self.items(event.item_id) if event.item_id is not None else None
        series = (info.series_id or "") if info else ""
        dark = 1 if info is not None and self.rules.is_dark(info.genres) else 0
        trig, trig_ids, trig_ev = k.pending_triggers(u)
        names = [k.applied(u), k.counters(u), k.session_state(u), k.sessions(u), trig, k.follows(u), k.profile(u),
                 k.session_events(u, "c"), k.session_events(u, "p"), trig_ids, trig_ev]
        args = [event.event_id, event.ts, event.type,
                "" if event.item_id is None else event.item_id, series, dark,
                1 if event.type in WATCH_TYPES else 0,
                0 if event.type == "episode_release" else 1,
                now_ms, event_json if event_json is not None else event.model_dump_json(exclude_none=True),
                int((info.runtime_min or 0) * 60_000) if info is not None else 0]
        if shard is not None:
            names += [k.due(shard), k.open_sessions(shard)]
            args.append(u)
        return names, args

    def close_idle_call(self, keys: SchedulerKeys, user_id: str, watermark_ms: int,
                        now_ms: int) -> tuple[list[str], list[Any]]:
        """(keys, args) for the idle-close script with the shard's event-time watermark."""
        k, u = keys, user_id
        trig, trig_ids, trig_ev = k.pending_triggers(u)
        names = [k.counters(u), k.session_state(u), k.sessions(u), trig, k.profile(u), k.session_events(u, "c"),
                 k.session_events(u, "p"), trig_ids, trig_ev]
        return names, [watermark_ms, now_ms]


def parse_session_records(raw: list[bytes | str]) -> list[dict[str, Any]]:
    """Closed-session records from the user's session list (oldest first)."""
    return [json.loads(r) for r in raw]
