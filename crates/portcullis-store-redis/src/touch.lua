-- Records activity: moves last-seen (never back) and the idle deadline, while the session is live.
-- KEYS[1]: the session hash; KEYS[2]: the tag's deadline index. ARGV[1]: now (ms); ARGV[2]: member.
local at = tonumber(ARGV[1])
local fields = redis.call('HMGET', KEYS[1], 'live', 's', 'il', 'a')
if fields[1] ~= '1' or tonumber(fields[2]) >= at then return 0 end
local deadline = tonumber(fields[4])
if fields[3] ~= '' then
  local idle = at + tonumber(fields[3])
  redis.call('HSET', KEYS[1], 'i', string.format('%d', idle))
  if idle < deadline then deadline = idle end
end
redis.call('HSET', KEYS[1], 's', ARGV[1])
redis.call('ZADD', KEYS[2], deadline, ARGV[2])
return 1
