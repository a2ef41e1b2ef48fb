
local per = tonumber(ARGV[1])
local out = {}
for n, key in ipairs(KEYS) do
  local rows = redis.call('ZREVRANGE', key, 0, per - 1, 'WITHSCORES')
  local part = {}
  for i = 1, #rows, 2 do part[#part + 1] = rows[i] .. ':' .. rows[i + 1] end
  out[n] = table.concat(part, ',')
end
return table.concat(out, ';')
