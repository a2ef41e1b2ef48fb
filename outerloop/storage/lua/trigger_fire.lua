
if ARGV[6] ~= '' then
  if redis.call('SADD', KEYS[4], ARGV[6]) == 0 then return 0 end
  if tonumber(ARGV[7]) > 0 then redis.call('EXPIRE', KEYS[4], tonumber(ARGV[7])) end
end
local detail = nil
if ARGV[3] ~= '' then detail = cjson.decode(ARGV[3]) end
local events = {}
if ARGV[9] ~= '' then events = {ARGV[9]} end
trig_fire({KEYS[1], KEYS[2], KEYS[3]}, ARGV[1], tonumber(ARGV[2]), ARGV[8], events, detail,
          {ids = tonumber(ARGV[4]), events = tonumber(ARGV[5])})
return 1
