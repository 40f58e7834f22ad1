-- Applies one change atomically if what it was planned from is unchanged.
-- KEYS: every key the change touches (all share one hash tag, so one slot).
-- ARGV: n, then n checks of three arguments each, then the operations, each as its length
--   followed by the command and its arguments (values may be binary).
-- A check is ("version", key, v): the session record at key has version v ("" = no record);
--   ("live", key, ""): the record is live; ("get", key, v): GET key is v (missing reads as "");
--   ("subject", key, v): the subject index at key has version v (its member "v"; "" = none).
-- The record header is described in record.rs: live at byte 1, version at bytes 2-9.
-- Returns 0 when a check fails (nothing written), else the ids of the XADDs, in order.
local n = tonumber(ARGV[1])
local at = 2
for _ = 1, n do
  local kind, key, expected = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  at = at + 3
  if kind == 'get' then
    local actual = redis.call('GET', key) or ''
    if actual ~= expected then return 0 end
  elseif kind == 'subject' then
    local actual = redis.call('ZSCORE', key, 'v') or ''
    if actual ~= expected then return 0 end
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
local ids = {}
while at <= #ARGV do
  local len = tonumber(ARGV[at])
  local op = {}
  for i = 1, len do op[i] = ARGV[at + i] end
  at = at + len + 1
  local reply = redis.call(unpack(op))
  if op[1] == 'XADD' then ids[#ids + 1] = reply end
end
return ids
