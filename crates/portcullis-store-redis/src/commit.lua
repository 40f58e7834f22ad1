-- Applies one change atomically if what it was planned from is unchanged.
-- KEYS: every key the change touches (all share one hash tag, so one slot).
-- ARGV[1]: JSON {"checks": [[cmd, key, field, expected], ...], "ops": [[command, args...], ...]}
--   a check is ["hget", key, field, value] or ["get", key, "", value]; a missing value reads as "".
-- Returns 0 when a check fails (nothing written), else the ids of the XADDs, in order.
local plan = cjson.decode(ARGV[1])
for _, check in ipairs(plan.checks) do
  local actual
  if check[1] == 'hget' then
    actual = redis.call('HGET', check[2], check[3])
  else
    actual = redis.call('GET', check[2])
  end
  if not actual then actual = '' end
  if actual ~= check[4] then return 0 end
end
local ids = {}
for _, op in ipairs(plan.ops) do
  local reply = redis.call(unpack(op))
  if op[1] == 'XADD' then ids[#ids + 1] = reply end
end
return ids
