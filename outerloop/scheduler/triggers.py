"""Triggers: the reasons a user's outer-loop cycle should run, and how they are queued.

A trigger is fired inside the same Lua script as the event effect that caused it (see
:mod:`outerloop.scheduler.sessionizer`), into the user's pending-trigger hash. Triggers of the
same name coalesce there (a count, the first and last time, up to ``max_event_ids`` source
event ids, the latest detail) until the user's next cycle takes them all at once. The names
match the planner's rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from outerloop.data.events import Event

TITLE_FINISHED = "title_finished"  # a film or an episode of a series was watched to the end
EPISODE_RELEASED = "episode_released"  # a new episode of a series the user follows
LATE_NIGHT_SESSION = "late_night_session"  # session ended after 23:00 local on thriller/horror
DRIFT = "drift"  # the evaluator flagged that what is served drifted from the feedback
SESSION_CLOSED = "session_closed"  # 30 minutes of event time without activity
STALE_ROWS = "stale_rows"  # the periodic sweep found the user's rows expired
ACTIVITY = "activity"  # any interaction (opt-in: real-time row refresh, the freshness bench)

TRIGGER_NAMES: tuple[str, ...] = (
    TITLE_FINISHED, EPISODE_RELEASED, LATE_NIGHT_SESSION, DRIFT, SESSION_CLOSED, STALE_ROWS, ACTIVITY,
)

# Event types that mean the user is watching the item (they decide "ended on", follows).
WATCH_TYPES = frozenset({"play", "pause", "seek", "finish"})


@dataclass(frozen=True, slots=True)
class Trigger:
    """One coalesced trigger as a cycle receives it.

    ``events`` are the most recent source events (for ``session_closed``: the session's last
    events), ``event_ids`` all source event ids up to a cap.

    ``first_ms``/``last_ms`` are wall-clock times (ms) of the first and last firing, so the
    cycle can tell how long the trigger waited; ``detail`` is the latest firing's detail (event
    time, item, series, session summary).
    """

    name: str
    count: int = 1
    first_ms: int = 0
    last_ms: int = 0
    event_ids: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, name: str | bytes, raw: str | bytes) -> "Trigger":
        """Parse the hash value the Lua scripts write (cjson writes empty lists as ``{}``)."""
        data = json.loads(raw)
        ids = data.get("event_ids") or []
        detail = data.get("detail") or {}
        events = []
        for raw_event in data.get("events") or []:
            try:
                events.append(Event.model_validate_json(raw_event))
            except ValueError:  # an event that no longer validates is dropped from the context
                continue
        return cls(
            name=name.decode() if isinstance(name, bytes) else name,
            count=int(data.get("count", 1)),
            first_ms=int(data.get("first_ms", 0)),
            last_ms=int(data.get("last_ms", 0)),
            event_ids=tuple(str(i) for i in ids) if isinstance(ids, list) else (),
            events=tuple(events),
            detail=detail if isinstance(detail, dict) else {},
        )


def triggers_from_hash(raw: Mapping[bytes | str, bytes | str] | Iterable[Any]) -> list[Trigger]:
    """Triggers from an HGETALL reply (a dict, or the flat list a Lua script returns)."""
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    else:
        flat = list(raw)
        pairs = list(zip(flat[0::2], flat[1::2]))
    return sorted((Trigger.from_json(k, v) for k, v in pairs), key=lambda t: t.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerRules:
    """When the planner's triggers fire (the thresholds, not the mechanism)."""

    dark_genres: frozenset[str] = frozenset({"thriller", "horror"})
    late_night_start_hour: int = 23  # local time; the window wraps midnight
    late_night_end_hour: int = 5
    on_activity: bool = False  # fire ACTIVITY on every interaction (real-time rows)
    max_event_ids: int = 256  # source event ids kept per coalesced trigger
    max_events: int = 20  # most recent source events (full JSON) kept per trigger

    def is_dark(self, genres: Iterable[str]) -> bool:
        return any(g.lower() in self.dark_genres for g in genres)


@dataclass(frozen=True, slots=True)
class ItemInfo:
    """What the scheduler needs to know about an item."""

    series_id: str | None = None
    genres: tuple[str, ...] = ()


class ItemLookup(Protocol):
    """Item facts for trigger rules (a catalog in memory, a Redis hash, ...)."""

    def __call__(self, item_id: int) -> ItemInfo | None: ...


def no_item_info(item_id: int) -> ItemInfo | None:
    """The lookup when no catalog is available: genre and series rules never fire."""
    return None


@dataclass(frozen=True, slots=True)
class CatalogLookup:
    """Item facts from an :class:`outerloop.data.schema.Catalog` (any object with ``get``)."""

    catalog: Any

    def __call__(self, item_id: int) -> ItemInfo | None:
        try:
            item = self.catalog.get(item_id)
        except KeyError:
            return None
        return ItemInfo(series_id=getattr(item, "series_id", None), genres=tuple(getattr(item, "genres", ())))


# Lua shared by every script that fires or merges triggers. A trigger value is JSON:
# {"count", "first_ms", "last_ms", "event_ids": [...], "events": [event JSON strings, newest
# last], "detail": {...}}. ``lim`` = {ids = max event ids, events = max events}.
LUA_TRIGGERS = r"""
local function trig_merge(a, b, lim)
  a.count = (a.count or 0) + (b.count or 1)
  if b.first_ms and (not a.first_ms or b.first_ms < a.first_ms) then a.first_ms = b.first_ms end
  if b.last_ms and (not a.last_ms or b.last_ms > a.last_ms) then a.last_ms = b.last_ms end
  if type(a.event_ids) ~= 'table' then a.event_ids = {} end
  if type(b.event_ids) == 'table' then
    for _, id in ipairs(b.event_ids) do
      if #a.event_ids >= lim.ids then break end
      table.insert(a.event_ids, id)
    end
  end
  if type(a.events) ~= 'table' then a.events = {} end
  if type(b.events) == 'table' then
    for _, ev in ipairs(b.events) do table.insert(a.events, ev) end
  end
  while #a.events > lim.events do table.remove(a.events, 1) end
  if b.detail ~= nil then a.detail = b.detail end
  return a
end

-- events: a Lua array of event JSON strings (may be empty)
local function trig_fire(key, name, now_ms, event_id, events, detail, lim)
  local one = {count = 1, first_ms = now_ms, last_ms = now_ms, event_ids = {}, events = events,
               detail = detail}
  if event_id ~= '' then one.event_ids = {event_id} end
  local raw = redis.call('HGET', key, name)
  local t = one
  if raw then
    t = trig_merge(cjson.decode(raw), one, lim)
  else
    while #t.events > lim.events do table.remove(t.events, 1) end
  end
  redis.call('HSET', key, name, cjson.encode(t))
end

local function trig_merge_hash(src, dst, lim)
  local flat = redis.call('HGETALL', src)
  for i = 1, #flat, 2 do
    local raw = redis.call('HGET', dst, flat[i])
    local merged = cjson.decode(flat[i + 1])
    if raw then merged = trig_merge(cjson.decode(raw), merged, lim) end
    redis.call('HSET', dst, flat[i], cjson.encode(merged))
  end
  redis.call('DEL', src)
end
"""

# Fire one trigger from outside the event path (evaluator drift, stale sweep, a release fanned
# out to a follower). ``marker`` makes it idempotent: it fires only if the marker was not yet in
# the user's set of applied ids (pass '' to always fire).
# KEYS: pending, applied   ARGV: name, now_ms, detail JSON|'', max_ids, max_events, marker,
#                                 applied_ttl_s, event_id|'', event JSON|''
# Returns 1 if fired.
LUA_FIRE = LUA_TRIGGERS + r"""
if ARGV[6] ~= '' then
  if redis.call('SADD', KEYS[2], ARGV[6]) == 0 then return 0 end
  if tonumber(ARGV[7]) > 0 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[7])) end
end
local detail = nil
if ARGV[3] ~= '' then detail = cjson.decode(ARGV[3]) end
local events = {}
if ARGV[9] ~= '' then events = {ARGV[9]} end
trig_fire(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[8], events, detail,
          {ids = tonumber(ARGV[4]), events = tonumber(ARGV[5])})
return 1
"""
