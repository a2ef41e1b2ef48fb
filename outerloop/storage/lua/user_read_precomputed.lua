
local p = redis.call('GET', KEYS[1]) or ''
local s = redis.call('SMEMBERS', KEYS[2])
return {p, table.concat(s, ',')}
