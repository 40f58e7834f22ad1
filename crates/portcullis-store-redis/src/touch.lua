-- Records activity: moves last-seen (never back) and the idle deadline, while the session is live.
-- KEYS[1]: the session record; KEYS[2]: its tag's meta hash (buckets.lua).
-- ARGV[1]: now (ms); ARGV[2]: the session id.
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
local tag = tag_of_meta(KEYS[2])
local name, bucket = deadline_bucket(tag, ARGV[2])
redis.call('ZADD', bucket, deadline, ARGV[2])
-- The summary keeps the bucket's earliest deadline (as DEADLINE in commit.lua).
settle(bucket, tag .. 'dd', name)
return 1
