
local token = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
local deadline = now + tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], deadline, token)
return {token, deadline}
