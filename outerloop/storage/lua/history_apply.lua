
local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local applied, changed = 0, false
for i = 3, #ARGV, 4 do
  local eid, mode, token, item = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('SADD', KEYS[4], eid) == 1 then
    applied = applied + 1
    if mode == 'h' or mode == 'hs' then
      redis.call('RPUSH', KEYS[1], token)
      changed = true
    end
    if (mode == 's' or mode == 'hs') and redis.call('SADD', KEYS[3], item) == 1 then
      changed = true
    end
  end
end
if applied > 0 then redis.call('EXPIRE', KEYS[4], ttl) end
local v
if changed then
  redis.call('LTRIM', KEYS[1], -cap, -1)
  v = redis.call('INCR', KEYS[2])
else
  v = tonumber(redis.call('GET', KEYS[2]) or '0')
end
return {applied, v}
