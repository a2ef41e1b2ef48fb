
local ttl = tonumber(ARGV[2])
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl) then
  local pttl = redis.call('PTTL', KEYS[1])
  if KEYS[8] then
    redis.call('ZADD', KEYS[8], 'XX', tonumber(ARGV[6]) + math.min(math.max(pttl, 50), ttl), ARGV[5])
  end
  return {0, pttl}
end
local run = {KEYS[5], KEYS[6], KEYS[7]}
trig_move({KEYS[2], KEYS[3], KEYS[4]}, run, {ids = tonumber(ARGV[3]), events = tonumber(ARGV[4])})
if KEYS[8] then redis.call('ZADD', KEYS[8], 'XX', tonumber(ARGV[6]) + ttl, ARGV[5]) end
-- ids as one JSON array and events joined by \30: two strings to parse instead of hundreds
local ids = redis.call('LRANGE', run[2], 0, -1)
local ids_json = '[]'
if #ids > 0 then ids_json = cjson.encode(ids) end
return {1, redis.call('HGETALL', run[1]), ids_json, table.concat(redis.call('LRANGE', run[3], 0, -1), '\30')}
