
local function fence_check(lease_key, token)
  local dl = redis.call('ZSCORE', lease_key, token)
  if not dl then return 'not_live' end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if now > tonumber(dl) then
    redis.call('ZREM', lease_key, token)
    return 'deadline'
  end
  return nil
end
