
local per, k = tonumber(ARGV[1]), tonumber(ARGV[2])
local skip = {}
for i = 3, #ARGV do skip[ARGV[i]] = true end
local acc, order = {}, {}
for _, key in ipairs(KEYS) do
  local rows = redis.call('ZREVRANGE', key, 0, per - 1, 'WITHSCORES')
  for i = 1, #rows, 2 do
    local m = rows[i]
    if not skip[m] then
      if acc[m] == nil then acc[m] = 0; order[#order + 1] = m end
      acc[m] = acc[m] + tonumber(rows[i + 1])
    end
  end
end
table.sort(order, function(a, b)
  if acc[a] ~= acc[b] then return acc[a] > acc[b] end
  return tonumber(a) < tonumber(b)
end)
local out = {}
for i = 1, math.min(k, #order) do out[i] = order[i] .. ':' .. string.format('%.17g', acc[order[i]]) end
return table.concat(out, ',')
