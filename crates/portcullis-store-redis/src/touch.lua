-- Records activity: moves last-seen (never back) and the idle deadline, while the session is live.
-- KEYS[1]: the session record; KEYS[2]: its deadline index; KEYS[3]: the tag's deadline summary.
-- ARGV[1]: now (ms); ARGV[2]: the session id; ARGV[3]: its bucket (its member in the summary).
-- The record header is described in record.rs (live at byte 1; last seen, idle deadline, idle
-- lifetime and absolute deadline as 8-byte big-endian integers at bytes 10, 18, 26 and 34).
local header = redis.call('GETRANGE', KEYS[1], 0, 41)
if #header < 42 or string.byte(header, 2) ~= 1 then return 0 end
local at = tonumber(ARGV[1])
local seen, _, lifetime, deadline = struct.unpack('>i8i8i8i8', header, 11)
if seen >= at then return 0 end
redis.call('SETRANGE', KEYS[1], 10, struct.pack('>i8', at))
if lifetime >= 0 then
  local idle = at + lifetime
  redis.call('SETRANGE', KEYS[1], 18, struct.pack('>i8', idle))
  if idle < deadline then deadline = idle end
end
redis.call('ZADD', KEYS[2], deadline, ARGV[2])
-- The summary keeps the bucket's earliest deadline (as SETTLE in commit.lua).
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
redis.call('ZADD', KEYS[3], first[2], ARGV[3])
return 1
