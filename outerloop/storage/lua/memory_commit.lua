
if ARGV[2] ~= '' then
  local why = fence_check(KEYS[2], ARGV[2])
  if why then return {-1, why} end
end
local v = tonumber(redis.call('HGET', KEYS[1], '_v') or '0')
if v ~= tonumber(ARGV[1]) then return {0, v, redis.call('HGETALL', KEYS[1])} end
if ARGV[3] == '1' then
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if f ~= '_v' then redis.call('HDEL', KEYS[1], f) end
  end
end
local n = tonumber(ARGV[4])
for i = 0, n - 1 do redis.call('HSET', KEYS[1], ARGV[5 + 2 * i], ARGV[6 + 2 * i]) end
for i = 5 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
redis.call('HSET', KEYS[1], '_v', v + 1)
return {1, v + 1}
