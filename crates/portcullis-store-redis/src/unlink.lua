-- Drops a time-index entry whose session record is gone (Redis expired it by its TTL because no
-- sweeper ran in time), with the session's id entry, unless the id has moved on meanwhile.
-- KEYS[1]: the tag's id hash; KEYS[2]: the time index (deadlines or purges); KEYS[3]: the record
-- the caller found missing (or KEYS[1] again when the id had no entry).
-- ARGV[1]: the session id; ARGV[2]: the token hash the caller read for it ("" = none).
-- Returns 1 when the entry was dropped, 0 when the session turned out to exist.
local hash = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if hash ~= ARGV[2] then return 0 end
if hash ~= '' then
  if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
