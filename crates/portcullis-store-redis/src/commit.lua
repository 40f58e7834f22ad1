-- Applies one change atomically if what it was planned from is unchanged.
-- KEYS: every key the change touches (all share one hash tag, so one slot).
-- ARGV: n, then n checks of four arguments each, then the operations, each as its length
--   followed by the command and its arguments (values may be binary).
-- A check is ("version", key, "", v): the session record at key has version v ("" = no record);
--   ("live", key, "", ""): the record is live; ("get", key, "", v): GET key is v (missing reads
--   as ""); ("subject", key, subject, v): the subject's entry in hash key has version v (its
--   first 8 bytes, big-endian; "" = no entry); ("members", key, "", v): the set at key holds
--   exactly the 32-byte members that v lists end to end.
-- The record header is described in record.rs: live at byte 1, version at bytes 2-9.
-- An operation ('SETTLE', bucket, summary, member) scores member of the deadline summary at the
--   bucket's earliest deadline (or removes it when the bucket is empty); touch.lua does the same.
-- An operation ('SUBJECT', hash, subject, added, removed) rewrites the subject's entry in hash
--   with its version moved on, the token hashes in removed taken out and those in added
--   appended (both are 32-byte hashes end to end). Every change of a subject's sessions moves
--   its version, so a change planned from the entry it read fails when another came first.
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
    local entry = redis.call('HGET', key, field)
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
    local first = redis.call('ZRANGE', op[2], 0, 0, 'WITHSCORES')
    if first[2] then
      redis.call('ZADD', op[3], first[2], op[4])
    else
      redis.call('ZREM', op[3], op[4])
    end
  elseif op[1] == 'SUBJECT' then
    local entry = redis.call('HGET', op[2], op[3])
    local version, kept = 0, {}
    if entry then
      version = struct.unpack('>i8', entry)
      for i = 9, #entry, 32 do
        local member = string.sub(entry, i, i + 31)
        if not holds(op[4], member) and not holds(op[5], member) then kept[#kept + 1] = member end
      end
    end
    kept[#kept + 1] = op[4]
    redis.call('HSET', op[2], op[3], struct.pack('>i8', version + 1) .. table.concat(kept))
  else
    local reply = redis.call(unpack(op))
    if op[1] == 'XADD' then ids[#ids + 1] = reply end
  end
end
return ids
