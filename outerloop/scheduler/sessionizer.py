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
from outerloop.storage.scripts import LuaScript
from outerloop.scheduler.triggers import LUA_TRIGGERS, ItemLookup, no_item_info

# Session helpers both scripts share. Session fields are stored flat in the state hash, prefixed
# 'c_' (current) and 'p_' (previous, waiting for the watermark to pass its end); each session's
# most recent events are in its own list (cfg.ev.c / cfg.ev.p).
_LUA_SESSIONS = r"""
local function fmt(x) return string.format('%.0f', x) end

local function load_s(key, p)
  local v = redis.call('HMGET', key, p..'sid', p..'start', p..'last', p..'n', p..'late',
                       p..'item', p..'item_ts', p..'dark', p..'hold')
  if not v[1] then return nil end
  return {sid = v[1], start = tonumber(v[2]), last = tonumber(v[3]), n = tonumber(v[4]),
          late = tonumber(v[5]), item = v[6] or '', item_ts = tonumber(v[7]) or -1,
          dark = tonumber(v[8]) or 0, hold = tonumber(v[9]) or tonumber(v[3])}
end

-- The session is active until its last event or the end of the title it is playing, whichever
-- is later; the idle gap counts from there.
local function horizon(s)
  if s.hold and s.hold > s.last then return s.hold end
  return s.last
end

local function save_s(key, p, s)
  if s == nil then
    redis.call('HDEL', key, p..'sid', p..'start', p..'last', p..'n', p..'late', p..'item',
               p..'item_ts', p..'dark', p..'hold')
    return
  end
  redis.call('HSET', key, p..'sid', s.sid, p..'start', fmt(s.start), p..'last', fmt(s.last),
             p..'n', fmt(s.n), p..'late', fmt(s.late), p..'item', s.item,
             p..'item_ts', fmt(s.item_ts), p..'dark', fmt(s.dark), p..'hold', fmt(s.hold or s.last))
end

local function take_item(s, ts, item, dark)
  if item ~= '' and ts >= s.item_ts then s.item = item; s.item_ts = ts; s.dark = dark end
end

local function push_event(cfg, list, json)
  if json == '' then return end
  redis.call('RPUSH', list, json)
  redis.call('LTRIM', list, -cfg.lim.events, -1)
end

local function load_state(key)
  local v = redis.call('HMGET', key, 'max_ts', 'closed_upto', 'seq')
  return {max_ts = tonumber(v[1]) or -1, closed_upto = tonumber(v[2]) or -1,
          seq = tonumber(v[3]) or 0}
end

local function save_state(key, st)
  redis.call('HSET', key, 'max_ts', fmt(st.max_ts), 'closed_upto', fmt(st.closed_upto),
             'seq', fmt(st.seq))
end

-- Close session s (its events are in list): record it, fire session_closed and, when it ended
-- on thriller/horror late at night (user local time), late_night_session.
local function finalize(cfg, state, s, list)
  local events = redis.call('LRANGE', list, 0, -1)
  redis.call('DEL', list)
  local rec = {sid = s.sid, start_ts = s.start, end_ts = s.last, n = s.n, late = s.late,
               last_item = s.item, ended_dark = (s.dark == 1)}
  redis.call('RPUSH', cfg.sessions, cjson.encode(rec))
  redis.call('LTRIM', cfg.sessions, -cfg.cap, -1)
  redis.call('HINCRBY', cfg.counters, 'sessions', 1)
  if horizon(s) + cfg.gap > state.closed_upto then state.closed_upto = horizon(s) + cfg.gap end
  local summary = {sid = s.sid, start_ts = s.start, end_ts = s.last, n = s.n, late = s.late}
  if s.item ~= '' then summary.last_item = tonumber(s.item) end
  local offset = tonumber(redis.call('HGET', cfg.profile, 'utc_offset_min') or '0') or 0
  local hour = math.floor((s.last + offset * 60000) / 3600000) % 24
  summary.local_hour = hour
  summary.tz_offset_min = offset
  trig_fire(cfg.trig, 'session_closed', cfg.now, '', events, summary, cfg.lim)
  local fired = 1
  if s.dark == 1 then
    local late_night
    if cfg.ln_start > cfg.ln_end then
      late_night = hour >= cfg.ln_start or hour < cfg.ln_end
    else
      late_night = hour >= cfg.ln_start and hour < cfg.ln_end
    end
    if late_night then
      trig_fire(cfg.trig, 'late_night_session', cfg.now, '', events, summary, cfg.lim)
      fired = fired + 1
    end
  end
  return fired
end
"""

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
APPLY_EVENT_LUA = _LUA_CONSTANTS + LUA_TRIGGERS + _LUA_SESSIONS + r"""
local eid, ts, etype, item, series = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local dark, watch, in_session = tonumber(ARGV[6]), ARGV[7] == '1', ARGV[8] == '1'
local ejson = ARGV[10]
local runtime_ms = tonumber(ARGV[11]) or 0
local T = {KEYS[5], KEYS[10], KEYS[11]}
local cfg = {sessions = KEYS[4], trig = T, profile = KEYS[7], counters = KEYS[2],
             now = tonumber(ARGV[9]), gap = C_GAP, cap = C_CAP,
             lim = {ids = C_MAX_IDS, events = C_MAX_EVENTS}, ln_start = C_LN_START, ln_end = C_LN_END}
local lateness = C_LATENESS
local LC, LP = KEYS[8], KEYS[9]

local function open_last()  -- the open session's horizon (what the idle sweep compares)
  local v = redis.call('HMGET', KEYS[3], 'c_last', 'c_hold')
  if not v[1] then return -1 end
  return math.max(tonumber(v[1]), tonumber(v[2]) or -1)
end

-- A play holds the session for the title's runtime; a pause, skip or finish releases it.
local function hold_for(s, ts)
  if etype == 'play' and runtime_ms > 0 then
    if ts + runtime_ms > (s.hold or s.last) then s.hold = ts + runtime_ms end
  elseif etype == 'pause' or etype == 'skip' or etype == 'finish' then
    if ts >= (s.item_ts or -1) then s.hold = ts end
  end
end

local function index(pending, last)
  if KEYS[12] then
    if pending == 1 then redis.call('ZADD', KEYS[12], 'NX', cfg.now, ARGV[12]) end
    if last >= 0 then redis.call('ZADD', KEYS[13], last, ARGV[12]) end
  end
  return pending
end

local follow_types = watch or etype == 'add_to_list'
if redis.call('SADD', KEYS[1], eid) == 0 then
  -- a redelivery: no effect, but report what the caller must (re)do outside this slot
  local follows = 0
  if series ~= '' and follow_types then follows = redis.call('SISMEMBER', KEYS[6], series) end
  local last = open_last()
  return {0, index(redis.call('EXISTS', KEYS[5]), last), last, 0, 0, 0, follows}
end
if C_APPLIED_TTL > 0 then redis.call('EXPIRE', KEYS[1], C_APPLIED_TTL) end
redis.call('HINCRBY', KEYS[2], 'events', 1)
redis.call('HINCRBY', KEYS[2], 'type:'..etype, 1)

local fired = 0
local detail = {type = etype, ts = ts}
if item ~= '' then detail.item_id = tonumber(item) end
if series ~= '' then detail.series_id = series end
local new_follow = 0
if series ~= '' and follow_types then new_follow = redis.call('SADD', KEYS[6], series) end
if etype == 'finish' then
  trig_fire(T, 'title_finished', cfg.now, eid, {ejson}, detail, cfg.lim); fired = fired + 1
end
if etype == 'episode_release' and series ~= '' and redis.call('SISMEMBER', KEYS[6], series) == 1 then
  trig_fire(T, 'episode_released', cfg.now, eid, {ejson}, detail, cfg.lim); fired = fired + 1
end
if C_ACTIVITY and in_session then
  trig_fire(T, 'activity', cfg.now, eid, {ejson}, detail, cfg.lim); fired = fired + 1
end

local late, closed = 0, 0
if in_session then
  local st = load_state(KEYS[3])
  local cur, prev = load_s(KEYS[3], 'c_'), load_s(KEYS[3], 'p_')
  local sitem, sdark = '', 0
  if watch then sitem = item; sdark = dark end
  if (st.max_ts >= 0 and ts < st.max_ts - lateness) or ts <= st.closed_upto then
    late = 1
    redis.call('HINCRBY', KEYS[2], 'late', 1)
    if cur and ts >= cur.start and ts <= cur.last then
      cur.n = cur.n + 1; cur.late = cur.late + 1; take_item(cur, ts, sitem, sdark)
      push_event(cfg, LC, ejson)
    elseif prev and ts >= prev.start and ts <= prev.last then
      prev.n = prev.n + 1; prev.late = prev.late + 1; take_item(prev, ts, sitem, sdark)
      push_event(cfg, LP, ejson)
    else
      redis.call('HINCRBY', KEYS[2], 'late_outside_session', 1)
    end
  else
    if cur and ts <= horizon(cur) + cfg.gap then
      cur.n = cur.n + 1
      if ts < cur.start then cur.start = ts end
      if ts > cur.last then cur.last = ts end
      hold_for(cur, ts)
      take_item(cur, ts, sitem, sdark)
      push_event(cfg, LC, ejson)
      if prev and cur.start - horizon(prev) <= cfg.gap then
        -- the event bridged the gap: one session again (previous events first)
        cur.sid = prev.sid; cur.start = prev.start; cur.n = cur.n + prev.n
        cur.late = cur.late + prev.late
        if prev.hold and prev.hold > (cur.hold or cur.last) then cur.hold = prev.hold end
        if prev.item_ts > cur.item_ts then
          cur.item = prev.item; cur.item_ts = prev.item_ts; cur.dark = prev.dark
        end
        local mine = redis.call('LRANGE', LC, 0, -1)
        redis.call('DEL', LC)
        if redis.call('EXISTS', LP) == 1 then redis.call('RENAME', LP, LC) end
        for _, e in ipairs(mine) do push_event(cfg, LC, e) end
        prev = nil
      end
    else
      if prev then fired = fired + finalize(cfg, st, prev, LP); closed = closed + 1 end
      prev = cur
      redis.call('DEL', LP)
      if prev and redis.call('EXISTS', LC) == 1 then redis.call('RENAME', LC, LP) end
      st.seq = st.seq + 1
      cur = {sid = fmt(st.seq), start = ts, last = ts, n = 1, late = 0, item = '', item_ts = -1, dark = 0,
             hold = ts}
      hold_for(cur, ts)
      take_item(cur, ts, sitem, sdark)
      push_event(cfg, LC, ejson)
    end
    if ts > st.max_ts then st.max_ts = ts end
  end
  if prev and horizon(prev) + cfg.gap <= st.max_ts - lateness then
    fired = fired + finalize(cfg, st, prev, LP); closed = closed + 1; prev = nil
  end
  save_s(KEYS[3], 'c_', cur); save_s(KEYS[3], 'p_', prev); save_state(KEYS[3], st)
end
local last = -1
if in_session then last = open_last() end
return {1, index(redis.call('EXISTS', KEYS[5]), last), last, late, closed, fired, new_follow}
"""

# Close the user's sessions whose end plus the gap the event-time clock has passed.
# KEYS: 1 counters, 2 sess, 3 sessions, 4 trig, 5 profile, 6 sess_ev_c, 7 sess_ev_p, 8 trig_ids,
#       9 trig_ev
# ARGV: 1 watermark_ms, 2 now_ms
# Returns {closed, open_last_ts|-1, has_pending 1/0, fired}
CLOSE_IDLE_LUA = _LUA_CONSTANTS + LUA_TRIGGERS + _LUA_SESSIONS + r"""
local cfg = {sessions = KEYS[3], trig = {KEYS[4], KEYS[8], KEYS[9]}, profile = KEYS[5], counters = KEYS[1],
             now = tonumber(ARGV[2]), gap = C_GAP, cap = C_CAP,
             lim = {ids = C_MAX_IDS, events = C_MAX_EVENTS}, ln_start = C_LN_START, ln_end = C_LN_END}
local wm = tonumber(ARGV[1])
local st = load_state(KEYS[2])
local cur, prev = load_s(KEYS[2], 'c_'), load_s(KEYS[2], 'p_')
local closed, fired = 0, 0
if prev and horizon(prev) + cfg.gap <= wm then
  fired = fired + finalize(cfg, st, prev, KEYS[7]); closed = closed + 1; prev = nil
end
if cur and horizon(cur) + cfg.gap <= wm then
  fired = fired + finalize(cfg, st, cur, KEYS[6]); closed = closed + 1; cur = nil
end
if cur == nil and prev ~= nil then  -- not reachable (prev ends before cur), kept for safety
  cur = prev; prev = nil
  if redis.call('EXISTS', KEYS[7]) == 1 then redis.call('RENAME', KEYS[7], KEYS[6]) end
end
if closed > 0 then
  save_s(KEYS[2], 'c_', cur); save_s(KEYS[2], 'p_', prev); save_state(KEYS[2], st)
end
local last = -1
if cur then last = horizon(cur) end
return {closed, last, redis.call('EXISTS', KEYS[4]), fired}
"""


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
