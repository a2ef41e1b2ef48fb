
local why = fence_check(KEYS[1], ARGV[1])
if why then return {0, why} end
local ng = tonumber(ARGV[3])
local a = 4
for g = 1, ng do
  local cur = redis.call('HGET', KEYS[1 + g], ARGV[a])
  local ok
  if ARGV[a + 1] == '1' then ok = (cur == ARGV[a + 2]) else ok = (cur == false) end
  if not ok then return {2, g, redis.call('HGETALL', KEYS[1 + g])} end
  a = a + 3
end
for i = 2 + ng, #KEYS do
  local kind = ARGV[a]
  if kind == 's' then
    redis.call('SET', KEYS[i], ARGV[a + 2])
  elseif kind == 'h' then
    redis.call('HSET', KEYS[i], ARGV[a + 1], ARGV[a + 2])
  elseif kind == 'd' then
    redis.call('HDEL', KEYS[i], ARGV[a + 1])
  else
    redis.call('HINCRBYFLOAT', KEYS[i], ARGV[a + 1], ARGV[a + 2])
  end
  a = a + 3
end
if ARGV[2] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
return {1, #KEYS - 1 - ng}
