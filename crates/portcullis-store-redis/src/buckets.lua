-- The buckets of a tag (prepended to every script that reaches one; see `buckets.rs`).
-- A tag's id links (`i:`), deadlines (`db:`, the same buckets as its id links) and subject
-- entries (`ub:`) are spread over buckets that grow by linear hashing: the tag's meta hash (`n`)
-- counts the buckets of each kind ('i', 'u'; 64 when unset, the layout before growth), and an
-- entry with hash h is in bucket h mod 2^(k+1), or h mod 2^k when that bucket does not exist yet
-- (2^k <= count < 2^(k+1)). A bucket that passes its fill splits the next bucket in turn.

-- The base64url value of character byte b (a missing character reads as '_').
local function sextet(b)
  if not b then return 63 end
  if b >= 65 and b <= 90 then return b - 65 end
  if b >= 97 and b <= 122 then return b - 71 end
  if b >= 48 and b <= 57 then return b + 4 end
  if b == 45 then return 62 end
  if b == 95 then return 63 end
  return b % 64
end

local function letter(v)
  if v < 26 then return string.char(65 + v) end
  if v < 52 then return string.char(71 + v) end
  if v < 62 then return string.char(v - 4) end
  if v == 62 then return '-' end
  return '_'
end

-- An id member (record.rs): a routed id is 1, its route, then its 16 random bytes, whose first
-- three base64 characters make h; any other id is its text, from its seventh character.
local function id_hash(member)
  if #member == 18 and string.byte(member, 1) == 1 then
    local r0, r1, r2 = string.byte(member, 3, 5)
    return math.floor(r0 / 4) + 64 * ((r0 % 4) * 16 + math.floor(r1 / 16))
      + 4096 * ((r1 % 16) * 4 + math.floor(r2 / 64))
  end
  local c0, c1, c2 = string.byte(member, 7, 9)
  return sextet(c0) + 64 * sextet(c1) + 4096 * sextet(c2)
end

-- The low 32 bits of the subject's 64-bit FNV-1a hash (they depend on nothing above them).
local function subject_hash(subject)
  local h = 2216829733
  for i = 1, #subject do
    h = bit.bxor(h, string.byte(subject, i))
    if h < 0 then h = h + 4294967296 end
    h = (h * 435) % 4294967296
  end
  return h
end

-- Bucket names: an id bucket below 64 is the character of its value (as the first random
-- character of the ids it holds), above it that character and the rest in decimal; a subject
-- bucket is hexadecimal.
local function bucket_name(kind, b)
  if kind == 'u' then return string.format('%02x', b) end
  if b < 64 then return letter(b) end
  return letter(b % 64) .. tostring(math.floor(b / 64))
end

local bucket_prefixes = { i = 'i:', u = 'ub:' }

-- `tag` is the tag's key prefix ('pc:{a3}:'), from its meta key.
local function tag_of_meta(meta)
  return string.sub(meta, 1, -2)
end

-- Counts read by this call of the script, by tag and kind (a create reaches three buckets).
local counts = {}

local function bucket_count(tag, kind)
  local count = counts[tag .. kind]
  if not count then
    count = tonumber(redis.call('HGET', tag .. 'n', kind)) or 64
    counts[tag .. kind] = count
  end
  return count
end

-- The largest power of two at or under count (a tag's buckets never number fewer than 64;
-- tests start from one to split at once).
local function low_of(count)
  local low = 1
  while low * 2 <= count do low = low * 2 end
  return low
end

-- The bucket holding hash h: its number and its key.
local function bucket_of(tag, kind, h)
  local count = bucket_count(tag, kind)
  local low = low_of(count)
  local b = h % (low * 2)
  if b >= count then b = h % low end
  return b, tag .. bucket_prefixes[kind] .. bucket_name(kind, b)
end

local function id_bucket(tag, member)
  return bucket_of(tag, 'i', id_hash(member))
end

-- The deadline bucket of an id (its id bucket's number): its name in the summary, and its key.
local function deadline_bucket(tag, member)
  local name = bucket_name('i', id_bucket(tag, member))
  return name, tag .. 'db:' .. name
end

-- `h`: the subject's hash as the caller computed it (`subject_hash` costs a few microseconds
-- of Lua for a subject of twenty characters), or nil.
local function subject_bucket(tag, subject, h)
  local _, key = bucket_of(tag, 'u', tonumber(h) or subject_hash(subject))
  return key
end

-- Scores bucket `name` in the deadline summary at its earliest deadline (or removes it).
local function settle(bucket, summary, name)
  local first = redis.call('ZRANGE', bucket, 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('ZADD', summary, first[2], name)
  else
    redis.call('ZREM', summary, name)
  end
end

-- After a new field in `bucket`: splits once when the bucket holds more than `fill`. Id hashes
-- have 18 bits, so id buckets stop at 2^18 per tag (a tag of 20 million sessions).
-- The split's functions are made only when a split is due: making a function costs every call
-- of the script, and a split comes once in dozens of new entries.
local function grow(tag, kind, bucket, fill)
  if redis.call('HLEN', bucket) <= tonumber(fill) or bucket_count(tag, kind) >= 262144 then
  return
  end
  -- Moves the fields of hash `from` whose hash is `to` modulo `span` into hash `into`.
  local function move_fields(from, into, hash_of, span, to)
    local all = redis.call('HGETALL', from)
    local moved, names = {}, {}
    for j = 1, #all, 2 do
      if hash_of(all[j]) % span == to then
        moved[#moved + 1] = all[j]
        moved[#moved + 1] = all[j + 1]
        names[#names + 1] = all[j]
      end
    end
    if #names > 0 then
      redis.call('HSET', into, unpack(moved))
      redis.call('HDEL', from, unpack(names))
    end
  end

  -- Adds one bucket of `kind` to the tag: the next bucket in turn gives the entries that now
  -- belong to the new one (with its deadlines, for id buckets).
  local function split(tag, kind)
    local count = bucket_count(tag, kind)
    local low = low_of(count)
    local from, to = count - low, count
    local prefix = bucket_prefixes[kind]
    local from_name, to_name = bucket_name(kind, from), bucket_name(kind, to)
    if kind == 'u' then
      move_fields(tag .. prefix .. from_name, tag .. prefix .. to_name, subject_hash, low * 2, to)
    else
      move_fields(tag .. prefix .. from_name, tag .. prefix .. to_name, id_hash, low * 2, to)
      local source, target = tag .. 'db:' .. from_name, tag .. 'db:' .. to_name
      local entries = redis.call('ZRANGE', source, 0, -1, 'WITHSCORES')
      local moved, names = {}, {}
      for j = 1, #entries, 2 do
        if id_hash(entries[j]) % (low * 2) == to then
          moved[#moved + 1] = entries[j + 1]
          moved[#moved + 1] = entries[j]
          names[#names + 1] = entries[j]
        end
      end
      if #names > 0 then
        redis.call('ZADD', target, unpack(moved))
        redis.call('ZREM', source, unpack(names))
        settle(source, tag .. 'dd', from_name)
        settle(target, tag .. 'dd', to_name)
      end
    end
    redis.call('HSET', tag .. 'n', kind, count + 1)
    counts[tag .. kind] = count + 1
  end

  split(tag, kind)
end

