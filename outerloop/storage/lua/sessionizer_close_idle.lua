
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
