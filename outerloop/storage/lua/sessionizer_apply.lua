
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
