
local h = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
local v = redis.call('GET', KEYS[2]) or ''
local s = redis.call('SMEMBERS', KEYS[3])
local rows = redis.call('HGETALL', KEYS[4])
local emb = redis.call('GET', KEYS[5]) or ''
return {table.concat(h, ','), v, table.concat(s, ','), rows, emb}
