
local SEP = '\31'

local function trig_fire(t, name, now_ms, event_id, events, detail, lim)
  redis.call('HINCRBY', t[1], name, 1)
  redis.call('HSETNX', t[1], name..'|first', now_ms)
  redis.call('HSET', t[1], name..'|last', now_ms)
  if detail ~= nil then redis.call('HSET', t[1], name..'|detail', cjson.encode(detail)) end
  if event_id ~= '' then
    redis.call('RPUSH', t[2], name..SEP..event_id)
    redis.call('LTRIM', t[2], -lim.ids, -1)
  end
  if #events > 0 then
    for _, ev in ipairs(events) do redis.call('RPUSH', t[3], name..SEP..ev) end
    redis.call('LTRIM', t[3], -lim.events, -1)
  end
end

-- Move every trigger of set src into set dst (src is the newer one) and delete src.
local function trig_move(src, dst, lim)
  local flat = redis.call('HGETALL', src[1])
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    local part = string.match(f, '|(%a+)$')
    if part == nil then
      redis.call('HINCRBY', dst[1], f, tonumber(v))
    elseif part == 'first' then
      local cur = tonumber(redis.call('HGET', dst[1], f))
      if cur == nil or tonumber(v) < cur then redis.call('HSET', dst[1], f, v) end
    elseif part == 'last' then
      local cur = tonumber(redis.call('HGET', dst[1], f))
      if cur == nil or tonumber(v) > cur then redis.call('HSET', dst[1], f, v) end
    else
      redis.call('HSET', dst[1], f, v)
    end
  end
  local caps = {0, lim.ids, lim.events}
  for j = 2, 3 do
    local items = redis.call('LRANGE', src[j], 0, -1)
    for _, it in ipairs(items) do redis.call('RPUSH', dst[j], it) end
    if #items > 0 then redis.call('LTRIM', dst[j], -caps[j], -1) end
  end
  redis.call('DEL', src[1], src[2], src[3])
end
