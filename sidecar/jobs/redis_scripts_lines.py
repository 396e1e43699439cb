"""The Redis queue's provider-batch state changes, each one Lua script (as redis_scripts.py).

Keys, under the queue's prefix: `line:{job id}` hash (doc: the line as deferred, plus
grp, batch, state, submission, submissions, reason, added); `group:{key}` deferred job ids
by when they were deferred; `groups` the group keys with deferred lines; `sub:{id}` hash
(status, doc, lease, lease_until, cancel); `subs` unfinished submission ids by when they
are due (while leased: when the lease runs out); `sub:{id}:lines` its job ids;
`batch:{id}:subs` the submissions that held lines of a batch of ours. A line's state is
its job's status, moved by the prelude's `move` (status sets, batch counts) in the same
script.
"""

from __future__ import annotations

from sidecar.jobs.redis_scripts import PRELUDE

# ARGV: prefix, group, id, lease, grp, added_at, doc, batch id ('' for none)
DEFER = (
    PRELUDE
    + """
local id = ARGV[3]
local key = P .. 'job:' .. id
if not unlease(key, ARGV[4]) then return 0 end
redis.call('HSET', key, 'status', 'deferred')
move(id, key, 'running', 'deferred')
redis.call('HSET', P .. 'line:' .. id, 'doc', ARGV[7], 'grp', ARGV[5], 'batch', ARGV[8],
           'state', 'deferred', 'submission', '', 'submissions', 0, 'reason', '',
           'added', ARGV[6])
redis.call('ZADD', P .. 'group:' .. ARGV[5], ARGV[6], id)
redis.call('SADD', P .. 'groups', ARGV[5])
return 1
"""
)

# ARGV: prefix, group, grp, limit, submission id, lease, lease seconds, doc
# Returns id, doc, submissions, reason for each line taken.
OPEN = (
    PRELUDE
    + """
local grp, sid = ARGV[3], ARGV[5]
local ids = redis.call('ZRANGE', P .. 'group:' .. grp, 0, tonumber(ARGV[4]) - 1)
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', P .. 'group:' .. grp, id)
  local lkey = P .. 'line:' .. id
  local n = redis.call('HINCRBY', lkey, 'submissions', 1)
  redis.call('HSET', lkey, 'state', 'submitted', 'submission', sid, 'position', #out / 4 + 1)
  local key = P .. 'job:' .. id
  if redis.call('HGET', key, 'status') == 'deferred' then
    redis.call('HSET', key, 'status', 'submitted')
    move(id, key, 'deferred', 'submitted')
  end
  redis.call('RPUSH', P .. 'sub:' .. sid .. ':lines', id)
  local v = redis.call('HMGET', lkey, 'doc', 'reason', 'batch')
  if v[3] and v[3] ~= '' then redis.call('SADD', P .. 'batch:' .. v[3] .. ':subs', sid) end
  out[#out + 1] = id
  out[#out + 1] = v[1]
  out[#out + 1] = tostring(n)
  out[#out + 1] = v[2] or ''
end
if redis.call('ZCARD', P .. 'group:' .. grp) == 0 then redis.call('SREM', P .. 'groups', grp) end
if #ids > 0 then
  local until_ = now + tonumber(ARGV[7])
  redis.call('HSET', P .. 'sub:' .. sid, 'status', 'submitting', 'doc', ARGV[8],
             'lease', ARGV[6], 'lease_until', until_, 'cancel', '0')
  redis.call('ZADD', P .. 'subs', until_, sid)
end
return out
"""
)

# ARGV: prefix, group, lease, lease seconds. Returns doc, cancel, or nil.
CLAIM_SUBMISSION = (
    PRELUDE
    + """
local due = redis.call('ZRANGEBYSCORE', P .. 'subs', '-inf', now, 'LIMIT', 0, 20)
for _, sid in ipairs(due) do
  local k = P .. 'sub:' .. sid
  local v = redis.call('HMGET', k, 'status', 'lease', 'lease_until', 'doc', 'cancel')
  if (not v[1]) or v[1] == 'done' then
    redis.call('ZREM', P .. 'subs', sid)
  elseif (not v[2]) or v[2] == '' or tonumber(v[3] or '0') < now then
    local until_ = now + tonumber(ARGV[4])
    redis.call('HSET', k, 'lease', ARGV[3], 'lease_until', until_)
    redis.call('ZADD', P .. 'subs', until_, sid)
    return {v[4], v[5] or '0'}
  end
end
return false
"""
)

# ARGV: prefix, group, id, lease, status, doc, due ('' keeps the lease), lease seconds,
#       cancel sent (0/1)
SAVE_SUBMISSION = (
    PRELUDE
    + """
local sid = ARGV[3]
local k = P .. 'sub:' .. sid
if redis.call('HGET', k, 'lease') ~= ARGV[4] then return 0 end
redis.call('HSET', k, 'status', ARGV[5], 'doc', ARGV[6])
if ARGV[7] == '' then
  local until_ = now + tonumber(ARGV[8])
  redis.call('HSET', k, 'lease_until', until_)
  redis.call('ZADD', P .. 'subs', until_, sid)
  return 1
end
redis.call('HDEL', k, 'lease', 'lease_until')
if ARGV[5] == 'done' then  -- its lines have landed: only the record stays
  redis.call('ZREM', P .. 'subs', sid)
  redis.call('DEL', P .. 'sub:' .. sid .. ':lines')
  return 1
end
local due = tonumber(ARGV[7])
if redis.call('HGET', k, 'cancel') == '1' and ARGV[9] == '0' then due = now end
redis.call('ZADD', P .. 'subs', due, sid)
return 1
"""
)

# ARGV: prefix, group, id, expected status, status, webhook pending (0/1), field, value, ...
LAND = (
    PRELUDE
    + """
local id = ARGV[3]
local key = P .. 'job:' .. id
if redis.call('HGET', key, 'status') ~= ARGV[4] then return 0 end
outcome(id, key, ARGV[4], ARGV[5], ARGV[6], 7)
local lkey = P .. 'line:' .. id
local grp = redis.call('HGET', lkey, 'grp')
if grp then redis.call('ZREM', P .. 'group:' .. grp, id) end
redis.call('DEL', lkey)
return 1
"""
)

# ARGV: prefix, group, id, reason, headers ('': deferred again, to be resubmitted)
RETURN_LINE = (
    PRELUDE
    + """
local id = ARGV[3]
local key = P .. 'job:' .. id
local lkey = P .. 'line:' .. id
if redis.call('HGET', lkey, 'state') ~= 'submitted' then return 0 end
local submitted = redis.call('HGET', key, 'status') == 'submitted'
if ARGV[5] ~= '' then
  redis.call('DEL', lkey)
  if submitted then
    redis.call('HSET', key, 'status', 'queued', 'headers', ARGV[5])
    move(id, key, 'submitted', 'queued')
    redis.call('XADD', P .. 'stream:' .. redis.call('HGET', key, 'priority'), '*', 'id', id)
  end
  return 1
end
redis.call('HSET', lkey, 'state', 'deferred', 'submission', '', 'reason', ARGV[4])
local v = redis.call('HMGET', lkey, 'grp', 'added')
redis.call('ZADD', P .. 'group:' .. v[1], v[2], id)
redis.call('SADD', P .. 'groups', v[1])
if submitted then
  redis.call('HSET', key, 'status', 'deferred')
  move(id, key, 'submitted', 'deferred')
end
return 1
"""
)

# ARGV: prefix, group, job ids... Returns {docs of the cancelled lines, submission ids}.
CANCEL_DEFERRED = (
    PRELUDE
    + """
local docs, held, seen = {}, {}, {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local key = P .. 'job:' .. id
  local lkey = P .. 'line:' .. id
  local status = redis.call('HGET', key, 'status')
  if status == 'deferred' then
    local v = redis.call('HMGET', lkey, 'grp', 'doc')
    if v[1] then redis.call('ZREM', P .. 'group:' .. v[1], id) end
    if v[2] then docs[#docs + 1] = v[2] end
    redis.call('DEL', lkey)
    redis.call('HSET', key, 'status', 'cancelled', 'finished_at', tostring(now))
    move(id, key, 'deferred', 'cancelled')
  elseif status == 'submitted' then
    local sid = redis.call('HGET', lkey, 'submission')
    if sid and sid ~= '' and not seen[sid] then
      seen[sid] = true
      held[#held + 1] = sid
    end
  end
end
return {docs, held}
"""
)

# KEYS: submission hash, subs.  ARGV: id
REQUEST_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1')
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], 'XX', 'LT', tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[1])
return 1
"""
