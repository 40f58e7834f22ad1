-- Drops a time-index entry whose session record is gone (deleted by hand, or expired by a TTL
-- an earlier version set), with the session's id entry, unless the id has moved on meanwhile.
-- KEYS[1]: the tag's meta hash (buckets.lua); KEYS[2]: the time index (deadlines or purges);
-- KEYS[3]: the record the caller found missing (KEYS[1] again when the link was no token hash).
-- ARGV[1]: the session id; ARGV[2]: the id's link as the caller read it ("" = none).
-- Returns 1 when the entry was dropped, 0 when the session turned out to exist.
local _, ids = id_bucket(tag_of_meta(KEYS[1]), ARGV[1])
local link = redis.call('HGET', ids, ARGV[1]) or ''
if link ~= ARGV[2] then return 0 end
if link ~= '' then
  -- A link that is not a 32-byte token hash leads nowhere: drop it too.
  if #link == 32 and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
  redis.call('HDEL', ids, ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
