
local new, half = tonumber(ARGV[1]), tonumber(ARGV[2])
local old = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
local factor = string.format('%.17g', 2 ^ ((old - new) / half))
for i = 2, #KEYS do redis.call('ZUNIONSTORE', KEYS[i], 1, KEYS[i], 'WEIGHTS', factor) end
redis.call('SET', KEYS[1], ARGV[1])
return new
