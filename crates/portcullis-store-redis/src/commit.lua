-- Applies one change atomically if what it was planned from is unchanged.
-- KEYS: every key the change touches (all share one hash tag, so one slot).
-- ARGV: n, then n checks of four arguments each, then the operations, each as its length
--   followed by the command and its arguments (values may be binary).
-- A check is ("version", key, "", v): the session record at key has version v ("" = no record);
--   ("live", key, "", ""): the record is live; ("get", key, "", v): GET key is v (missing reads
--   as ""); ("subject", meta, subject, v): the subject's entry in its bucket of the tag whose
--   meta hash is meta has version v (its first 8 bytes, big-endian; "" = no entry);
--   ("members", key, "", v): the set at key holds exactly the 32-byte members that v lists end
--   to end.
-- Buckets (buckets.lua) are named by their tag's meta hash and found here, where the bucket
-- count cannot change under the change.
-- The record header is described in record.rs: live at byte 1, version at bytes 2-9.
-- An operation ('SETTLE', bucket, summary, member) scores member of the deadline summary at the
--   bucket's earliest deadline (or removes it when the bucket is empty).
-- An operation ('LINK', meta, id, hash, fill) links session id to token hash in its id bucket
--   ("" unlinks it); ('DEADLINE', meta, id, deadline) scores the id in its deadline bucket (""
--   takes it out) and settles the bucket's score in the tag's summary, as touch.lua does.
-- An operation ('SUBJECT', meta, subject, added, removed, fill, hash) rewrites the subject's entry
--   with its version moved on, the token hashes in removed taken out and those in added
--   appended (both are 32-byte hashes end to end). Every change of a subject's sessions moves
--   its version, so a change planned from the entry it read fails when another came first.
-- A new field that takes its bucket past fill splits a bucket of its tag.
-- Returns 0 when a check fails (nothing written), else the ids of the XADDs, in order.
local n = tonumber(ARGV[1])
local at = 2
for _ = 1, n do
  local kind, key, field, expected = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  at = at + 4
  if kind == 'get' then
    local actual = redis.call('GET', key) or ''
    if actual ~= expected then return 0 end
  elseif kind == 'members' then
    if redis.call('SCARD', key) * 32 ~= #expected then return 0 end
    for i = 1, #expected, 32 do
      if redis.call('SISMEMBER', key, string.sub(expected, i, i + 31)) == 0 then return 0 end
    end
  elseif kind == 'subject' then
    local entry = redis.call('HGET', subject_bucket(tag_of_meta(key), field), field)
    if not entry then
      if expected ~= '' then return 0 end
    elseif expected == '' or struct.unpack('>i8', entry) ~= tonumber(expected) then
      return 0
    end
  else
    local header = redis.call('GETRANGE', key, 0, 9)
    if kind == 'version' then
      if header == '' then
        if expected ~= '' then return 0 end
      elseif expected == '' or struct.unpack('>i8', header, 3) ~= tonumber(expected) then
        return 0
      end
    elseif header == '' or string.byte(header, 2) ~= 1 then
      return 0
    end
  end
end
local function holds(hashes, hash)
  for i = 1, #hashes, 32 do
    if string.sub(hashes, i, i + 31) == hash then return true end
  end
  return false
end
local ids = {}
while at <= #ARGV do
  local len = tonumber(ARGV[at])
  local op = {}
  for i = 1, len do op[i] = ARGV[at + i] end
  at = at + len + 1
  if op[1] == 'SETTLE' then
    settle(op[2], op[3], op[4])
  elseif op[1] == 'LINK' then
    local tag = tag_of_meta(op[2])
    local _, bucket = id_bucket(tag, op[3])
    if op[4] == '' then
      redis.call('HDEL', bucket, op[3])
    elseif redis.call('HSET', bucket, op[3], op[4]) == 1 then
      grow(tag, 'i', bucket, op[5])
    end
  elseif op[1] == 'DEADLINE' then
    local tag = tag_of_meta(op[2])
    local name, bucket = deadline_bucket(tag, op[3])
    if op[4] == '' then
      redis.call('ZREM', bucket, op[3])
    else
      redis.call('ZADD', bucket, op[4], op[3])
    end
    settle(bucket, tag .. 'dd', name)
  elseif op[1] == 'SUBJECT' then
    local tag = tag_of_meta(op[2])
    local bucket = subject_bucket(tag, op[3], op[7])
    local entry = redis.call('HGET', bucket, op[3])
    local version, kept = 0, {}
    if entry then
      version = struct.unpack('>i8', entry)
      for i = 9, #entry, 32 do
        local member = string.sub(entry, i, i + 31)
        if not holds(op[4], member) and not holds(op[5], member) then kept[#kept + 1] = member end
      end
    end
    kept[#kept + 1] = op[4]
    local rewritten = struct.pack('>i8', version + 1) .. table.concat(kept)
    if redis.call('HSET', bucket, op[3], rewritten) == 1 then grow(tag, 'u', bucket, op[6]) end
  else
    local reply = redis.call(unpack(op))
    if op[1] == 'XADD' then ids[#ids + 1] = reply end
  end
end
return ids
