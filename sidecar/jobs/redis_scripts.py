"""The Redis queue's state changes, each one Lua script so it is atomic across every worker.

Keys (all under one prefix with a hash tag, so a Redis Cluster keeps them in one slot):
`job:{id}` hash; `stream:{0,1,2}` job ids by priority, consumer group `workers`;
`delayed` retries by due time; `status:{status}` and `all` job ids by creation time;
`webhooks` pending deliveries by last try; `finished` stand-alone jobs by finishing time
(for retention); `batch:{id}` record, `batch:{id}:jobs` ids in input order,
`batch:{id}:counts` jobs by status; `file:{id}` and `file:{id}:content`.
Time is Redis's own (`TIME`), so workers with skewed clocks agree on leases and retries.
"""

from __future__ import annotations

PRELUDE = """
local P, G = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local TERMINAL = {succeeded = true, failed = true, dead = true, cancelled = true}
local function move(id, key, old, new)
  local created = redis.call('HGET', key, 'created_at') or '0'
  if old then redis.call('ZREM', P .. 'status:' .. old, id) end
  redis.call('ZADD', P .. 'status:' .. new, created, id)
  local batch = redis.call('HGET', key, 'batch_id')
  if batch then
    local counts = P .. 'batch:' .. batch .. ':counts'
    if old then redis.call('HINCRBY', counts, old, -1) end
    redis.call('HINCRBY', counts, new, 1)
  end
end
local function drop_entry(stream, entry)
  redis.call('XACK', stream, G, entry)
  redis.call('XDEL', stream, entry)
end
local function fenced(key, lease)
  local v = redis.call('HMGET', key, 'status', 'lease', 'stream', 'entry')
  if v[1] ~= 'running' or v[2] ~= lease then return nil end
  return v
end
-- Writes a job's outcome: `status`, then the fields from ARGV[from] on (name, value, ...;
-- empty values skipped); a stand-alone job joins `finished`, a pending webhook `webhooks`.
local function outcome(id, key, old, status, pending, from)
  redis.call('HSET', key, 'status', status, 'finished_at', tostring(now))
  if not redis.call('HGET', key, 'batch_id') then redis.call('ZADD', P .. 'finished', now, id) end
  for i = from, #ARGV, 2 do
    if ARGV[i + 1] ~= '' then redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
  end
  if pending == '1' then redis.call('ZADD', P .. 'webhooks', now, id) end
  move(id, key, old, status)
end
-- Ends a run that still holds `lease`: its stream entry and lease are gone. False when
-- the lease was lost (the job was reclaimed): the caller must change nothing then.
local function unlease(key, lease)
  local v = fenced(key, lease)
  if not v then return false end
  drop_entry(v[3], v[4])
  redis.call('HDEL', key, 'lease', 'stream', 'entry')
  return true
end
"""

# ARGV: prefix, group, consumer, lease, visibility timeout (ms), look for silent workers (0/1),
#       then where that look goes on in each stream (XAUTOCLAIM cursors).
# Returns the three cursors, '1' if the job was taken over, then the job's fields (if any).
CLAIM = (
    PRELUDE
    + """
local C, L, vt = ARGV[3], ARGV[4], ARGV[5]
local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', P .. 'delayed', id)
  local prio = redis.call('HGET', P .. 'job:' .. id, 'priority')
  if prio then redis.call('XADD', P .. 'stream:' .. prio, '*', 'id', id) end
end
local function start(stream, entry)
  local id = entry[2][2]
  local key = P .. 'job:' .. id
  local v = redis.call('HMGET', key, 'status', 'entry', 'attempts', 'started_at')
  local status = v[1]
  if (not status) or TERMINAL[status] or (status == 'running' and v[2] ~= entry[1]) then
    drop_entry(stream, entry[1])  -- a finished job, or a stale duplicate
    return nil
  end
  if status == 'queued' then move(id, key, 'queued', 'running') end
  redis.call('HSET', key, 'status', 'running', 'lease', L, 'worker', C, 'stream', stream,
             'entry', entry[1], 'attempts', tonumber(v[3] or '0') + 1)
  if not v[4] then redis.call('HSET', key, 'started_at', tostring(now)) end
  return redis.call('HGETALL', key)
end
local cursors = {ARGV[7], ARGV[8], ARGV[9]}
local function answer(job, taken)
  local out = {cursors[1], cursors[2], cursors[3], taken}
  for _, x in ipairs(job or {}) do out[#out + 1] = x end
  return out
end
if ARGV[6] == '1' then
  for p = 0, 2 do
    local s = P .. 'stream:' .. p
    for _ = 1, 20 do
      local r = redis.call('XAUTOCLAIM', s, G, C, vt, cursors[p + 1], 'COUNT', 1)
      cursors[p + 1] = r[1]
      for _, entry in ipairs(r[2]) do
        local job = start(s, entry)
        if job then return answer(job, '1') end
      end
      if r[1] == '0-0' then break end
    end
  end
end
for p = 0, 2 do
  local s = P .. 'stream:' .. p
  for _ = 1, 100 do
    local r = redis.call('XREADGROUP', 'GROUP', G, C, 'COUNT', 1, 'STREAMS', s, '>')
    if not r then break end
    local job = start(s, r[1][2][1])
    if job then return answer(job, '0') end
  end
end
return answer(nil, '0')
"""
)

# ARGV: prefix, group, consumer, id, lease
RENEW = (
    PRELUDE
    + """
local v = fenced(P .. 'job:' .. ARGV[4], ARGV[5])
if not v then return 0 end
redis.call('XCLAIM', v[3], G, ARGV[3], 0, v[4], 'JUSTID')
return 1
"""
)

# ARGV: prefix, group, id, lease, status, webhook pending (0/1), then field, value, ...
SETTLE = (
    PRELUDE
    + """
local id = ARGV[3]
local key = P .. 'job:' .. id
if not unlease(key, ARGV[4]) then return 0 end
outcome(id, key, 'running', ARGV[5], ARGV[6], 7)
return 1
"""
)

# ARGV: prefix, group, id, lease, delay, status_code, error
RETRY = (
    PRELUDE
    + """
local id = ARGV[3]
local key = P .. 'job:' .. id
if not unlease(key, ARGV[4]) then return 0 end
redis.call('HSET', key, 'status', 'queued')
if ARGV[6] ~= '' then redis.call('HSET', key, 'status_code', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', key, 'error', ARGV[7]) end
redis.call('ZADD', P .. 'delayed', now + tonumber(ARGV[5]), id)
move(id, key, 'running', 'queued')
return 1
"""
)

# ARGV: prefix, group, id, lease
RELEASE = (
    PRELUDE
    + """
local id = ARGV[3]
local key = P .. 'job:' .. id
if not unlease(key, ARGV[4]) then return 0 end
redis.call('HINCRBY', key, 'attempts', -1)
redis.call('HSET', key, 'status', 'queued')
redis.call('XADD', P .. 'stream:' .. redis.call('HGET', key, 'priority'), '*', 'id', id)
move(id, key, 'running', 'queued')
return 1
"""
)

# ARGV: prefix, group, job ids...
CANCEL = (
    PRELUDE
    + """
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local key = P .. 'job:' .. id
  if redis.call('HGET', key, 'status') == 'queued' then
    redis.call('HSET', key, 'status', 'cancelled', 'finished_at', tostring(now))
    redis.call('ZREM', P .. 'delayed', id)
    move(id, key, 'queued', 'cancelled')
    n = n + 1
  end
end
return n
"""
)

# ARGV: prefix, group, before, limit
TAKE_WEBHOOKS = (
    PRELUDE
    + """
local ids = redis.call('ZRANGEBYSCORE', P .. 'webhooks', '-inf', ARGV[3], 'LIMIT', 0, ARGV[4])
for _, id in ipairs(ids) do redis.call('ZADD', P .. 'webhooks', now, id) end
return ids
"""
)

# ARGV: prefix, group, finished before, limit. `finished` holds stand-alone jobs by the time
# they finished (a batch's jobs go with their batch); a pending webhook is stepped over.
PURGE = (
    PRELUDE
    + """
local before, left, purged, offset = ARGV[3], tonumber(ARGV[4]), 0, 0
while left > 0 do
  local ids = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. before,
                         'LIMIT', offset, left)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    if redis.call('ZSCORE', P .. 'webhooks', id) then
      offset = offset + 1
    else
      local key = P .. 'job:' .. id
      redis.call('ZREM', P .. 'status:' .. (redis.call('HGET', key, 'status') or ''), id)
      redis.call('ZREM', P .. 'all', id)
      redis.call('ZREM', P .. 'finished', id)
      redis.call('DEL', key)
      purged, left = purged + 1, left - 1
    end
  end
end
return purged
"""
)

# KEYS: batch hash.  ARGV: expected status, new status, doc
SWAP_BATCH = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'doc', ARGV[3])
return 1
"""
