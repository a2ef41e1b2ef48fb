
local ours = 0
local pending, run = {KEYS[2], KEYS[3], KEYS[4]}, {KEYS[5], KEYS[6], KEYS[7]}
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == 'abort' then
    -- the pending ones are newer: fold them into the in-flight set, which becomes pending again
    trig_move(pending, run, {ids = tonumber(ARGV[3]), events = tonumber(ARGV[4])})
    for j = 1, 3 do
      if redis.call('EXISTS', run[j]) == 1 then redis.call('RENAME', run[j], pending[j]) end
    end
  else
    redis.call('DEL', run[1], run[2], run[3])
  end
  redis.call('DEL', KEYS[1])
  ours = 1
end
local pending = redis.call('EXISTS', KEYS[2])
if KEYS[9] then
  if pending == 1 then
    redis.call('ZADD', KEYS[8], tonumber(ARGV[6]), ARGV[5])
  elseif ours == 1 then
    redis.call('ZREM', KEYS[8], ARGV[5])
  end
  if ARGV[7] ~= '' then redis.call('ZADD', KEYS[9], tonumber(ARGV[7]), ARGV[5]) end
end
return {ours, pending}
