-- Settles a deadline bucket's score in its tag's summary to the bucket's earliest deadline (or
-- takes the bucket out of the summary when it is empty), after the sweeper changed the bucket
-- itself. Atomic, so a deadline added meanwhile is never hidden behind a later score.
-- (commit.lua's SETTLE and touch.lua do the same after their own changes.)
-- KEYS[1]: the bucket; KEYS[2]: the tag's deadline summary. ARGV[1]: the bucket's member there.
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then
  redis.call('ZADD', KEYS[2], first[2], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
