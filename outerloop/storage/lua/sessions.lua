
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

-- Close session s (its events are in list): record it, fire session_closed with the session's
-- events and, when it ended on thriller/horror late at night (user local time),
-- late_night_session beside it, without a second copy of the events (the two share the capped
-- events list: a copy would push the session_closed's own events out of it).
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
      trig_fire(cfg.trig, 'late_night_session', cfg.now, '', {}, summary, cfg.lim)
      fired = fired + 1
    end
  end
  return fired
end
