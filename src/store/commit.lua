#!lua name=hotlead
-- hotlead's atomic partition-batch commit.
--
-- One call commits everything one source partition's batch changed: contact
-- values, leaderboard entries, outbox entries (alerts and dead letters) and
-- the offset watermark. Every key carries the partition's hash tag, so the
-- call is atomic on a single Redis and on Redis Cluster alike.
--
-- KEYS[1] owner epoch, KEYS[2] offset watermark, KEYS[3] outbox stream,
-- KEYS[4] recent-alerts stream, KEYS[5] id of the last commit applied,
-- KEYS[6..] contact values and sorted sets referred to by index.
-- ARGV[1] caller's epoch, ARGV[2] expected watermark ('' for none),
-- ARGV[3] new watermark, ARGV[4] commit id (unique per owner epoch), then
-- operations:
--   H <key index> <n> <field> <value> ...   HSET
--   Z <key index> <score> <member>          ZADD
--   R <key index> <member>                  ZREM
--   X <n> <field> <value> ...               XADD to the outbox
--   A <payload>                             XADD to recent alerts (capped)
--   C <key index> <contact> <value>         HSET of a contact's state
--   D <key index>                           DEL (a contact's old key)
--   S <key index> <value>                   SET
--   P <key index> <max>                     ZREMRANGEBYSCORE -inf <max>
--   V <key index> <id> <names>              HSET of a vocabulary
--   E <key index> <contact>                 HDEL of a contact's state
--   K <stream id>                           XDEL from recent alerts (an
--                                           account alert naming an erased
--                                           contact)
--   T <key index> <contact> <offset>        tombstone of an erased contact
--                                           (HSET of its id's SHA-1), and
--                                           its recent alerts dropped
-- Returns the outbox length.
--
-- A commit retried after its reply was lost (the call ran, the connection
-- dropped) is recognised by its id and not applied again: the reply is the
-- outbox length, as the first time. A partition with no owner epoch at all
-- lost its state (a flushed or replaced Redis): LOST, not FENCED.

-- A protobuf varint at `pos`: its value and the position after it.
local function varint(s, pos)
  local v, scale = 0, 1
  while true do
    local b = string.byte(s, pos)
    if not b then return nil, pos end
    v = v + (b % 128) * scale
    pos = pos + 1
    if b < 128 then return v, pos end
    scale = scale * 128
  end
end

-- The contact_id of a ScoreAlert payload (field 2; only field 1, the
-- alert id, comes before it), or nil.
local function alert_contact(p)
  local pos = 1
  while pos <= #p do
    local tag, len
    tag, pos = varint(p, pos)
    if not tag or tag % 8 ~= 2 then return nil end
    len, pos = varint(p, pos)
    if not len then return nil end
    if math.floor(tag / 8) == 2 then return string.sub(p, pos, pos + len - 1) end
    pos = pos + len
  end
  return nil
end

-- Drops the recent alerts (KEYS[4] of a commit) that name `contact`.
local function forget_recent(key, contact)
  for _, e in ipairs(redis.call('XRANGE', key, '-', '+')) do
    local f = e[2]
    for j = 1, #f, 2 do
      if f[j] == 'alert' and alert_contact(f[j + 1]) == contact then
        redis.call('XDEL', key, e[1])
      end
    end
  end
end

local function commit(keys, args)
  local epoch = redis.call('GET', keys[1])
  if not epoch then
    return redis.error_reply('LOST the partition has no owner epoch: its state is gone')
  end
  if epoch ~= args[1] then
    return redis.error_reply('FENCED owner epoch is ' .. epoch .. ', caller holds ' .. args[1])
  end
  if redis.call('GET', keys[5]) == args[4] then
    return redis.call('XLEN', keys[3])
  end
  local wm = redis.call('GET', keys[2]) or ''
  if wm ~= args[2] then
    return redis.error_reply('WATERMARK stored ' .. wm .. ', caller expected ' .. args[2])
  end
  local i = 5
  local n = #args
  while i <= n do
    local op = args[i]
    if op == 'H' then
      local cnt = tonumber(args[i + 2])
      redis.call('HSET', keys[tonumber(args[i + 1])], unpack(args, i + 3, i + 2 + 2 * cnt))
      i = i + 3 + 2 * cnt
    elseif op == 'Z' then
      redis.call('ZADD', keys[tonumber(args[i + 1])], args[i + 2], args[i + 3])
      i = i + 4
    elseif op == 'R' then
      redis.call('ZREM', keys[tonumber(args[i + 1])], args[i + 2])
      i = i + 3
    elseif op == 'X' then
      local cnt = tonumber(args[i + 1])
      redis.call('XADD', keys[3], '*', unpack(args, i + 2, i + 1 + 2 * cnt))
      i = i + 2 + 2 * cnt
    elseif op == 'A' then
      redis.call('XADD', keys[4], 'MAXLEN', '~', '200', '*', 'alert', args[i + 1])
      i = i + 2
    elseif op == 'S' then
      redis.call('SET', keys[tonumber(args[i + 1])], args[i + 2])
      i = i + 3
    elseif op == 'C' then
      redis.call('HSET', keys[tonumber(args[i + 1])], args[i + 2], args[i + 3])
      i = i + 4
    elseif op == 'D' then
      redis.call('DEL', keys[tonumber(args[i + 1])])
      i = i + 2
    elseif op == 'V' then
      redis.call('HSET', keys[tonumber(args[i + 1])], args[i + 2], args[i + 3])
      i = i + 4
    elseif op == 'E' then
      redis.call('HDEL', keys[tonumber(args[i + 1])], args[i + 2])
      i = i + 3
    elseif op == 'T' then
      redis.call('HSET', keys[tonumber(args[i + 1])], redis.sha1hex(args[i + 2]), args[i + 3])
      forget_recent(keys[4], args[i + 2])
      i = i + 4
    elseif op == 'K' then
      redis.call('XDEL', keys[4], args[i + 1])
      i = i + 2
    elseif op == 'P' then
      redis.call('ZREMRANGEBYSCORE', keys[tonumber(args[i + 1])], '-inf', args[i + 2])
      i = i + 3
    else
      return redis.error_reply('BADOP unknown operation ' .. tostring(op))
    end
  end
  redis.call('SET', keys[2], args[3])
  redis.call('SET', keys[5], args[4])
  return redis.call('XLEN', keys[3])
end

redis.register_function('hotlead_commit', commit)

-- Claims a partition for a new owner: KEYS[1] owner epoch, KEYS[2] offset
-- watermark. Increments the epoch (fencing every earlier owner) and returns
-- it with the watermark ('' for none), atomically.
local function claim(keys, args)
  local epoch = redis.call('INCR', keys[1])
  local wm = redis.call('GET', keys[2]) or ''
  return { epoch, wm }
end

redis.register_function('hotlead_claim', claim)

-- Sets tombstones of erased contacts: KEYS[1] the partition's tombstones,
-- ARGV the contact ids (stored as their SHA-1, never as they are).
local function tombstone(keys, args)
  for _, contact in ipairs(args) do
    redis.call('HSETNX', keys[1], redis.sha1hex(contact), 'rebuild')
  end
  return #args
end

redis.register_function('hotlead_tombstone', tombstone)

-- Reads contacts of one partition: KEYS[1] the partition's vocabularies,
-- KEYS[2] its contact states, KEYS[3] its tombstones, KEYS[4..] the
-- contacts' keys in the text layout of earlier versions; ARGV[1] the
-- reader's vocabulary id (4 bytes), ARGV[2..] the contact ids. For each
-- contact: nil; {'x'} for an erased one; {'b', value} for the binary state;
-- {'b', value, vocabulary} when the value was written in another
-- vocabulary than the reader's (bytes 2 to 5 of a value); {'h', field,
-- value, ...} for the text layout.
local function load(keys, args)
  local out = {}
  for i = 4, #keys do
    local contact = args[i - 2]
    local v = redis.call('HGET', keys[2], contact)
    if redis.call('HEXISTS', keys[3], redis.sha1hex(contact)) == 1 then
      out[i - 3] = { 'x' }
    elseif v then
      local id = string.sub(v, 2, 5)
      if id ~= args[1] then
        out[i - 3] = { 'b', v, redis.call('HGET', keys[1], id) }
      else
        out[i - 3] = { 'b', v }
      end
    elseif redis.call('EXISTS', keys[i]) == 1 then
      local r = redis.call('HGETALL', keys[i])
      table.insert(r, 1, 'h')
      out[i - 3] = r
    else
      out[i - 3] = false
    end
  end
  return out
end

redis.register_function{function_name = 'hotlead_load', callback = load, flags = { 'no-writes' }}
