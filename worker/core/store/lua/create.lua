-- Records a new rebook event, idempotent on event_id (the rebook id is derived from it, so the
-- record itself is the dedupe marker); a second event for a booking that has an active rebook is
-- recorded as DUPLICATE at once (never a second reschedule). A WAITING record has no history list
-- yet: its first entry ("received") is implied by created_ts, which saves a key per waiting rebook;
-- nor `updated_ts` (it is created_ts until the first transition: 32 bytes less per waiting rebook).
-- ARGV: 1 prefix, 2 rebook id, 3 event_id, 4 booking_id, 5 user_id, 6 performer_id ("" unknown),
--       7 deadline ts, 8 now, 9 now ISO-Z, 10 retention seconds, 11 lease seconds,
--       12 due score for a new WAITING record
-- Returns {"exists", id} | {"duplicate", active id} | {"created", dispatch performer "1"/"0"}
local p, id, eid, bid, uid, pid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now, now_iso = tonumber(ARGV[8]), ARGV[9]
local rk = p .. 'r:' .. id
if redis.call('EXISTS', rk) == 1 then
  return {'exists', id}
end
redis.call('HSET', rk, 'event_id', eid, 'booking_id', bid, 'user_id', uid,
  'performer_id', pid, 'created_ts', ARGV[8], 'deadline_ts', ARGV[7])
if pid == '' then redis.call('HDEL', rk, 'performer_id') end
redis.call('ZADD', p .. 'created', now, id)
local ak = p .. 'active:' .. bid
local active = redis.call('GET', ak)
if active and active ~= id then
  local st = redis.call('HGET', p .. 'r:' .. active, 'state')
  if ACTIVE[st] then  -- ACTIVE: worker/core/states.py, prepended by the store's loader
    local reason = 'duplicate of ' .. active
    redis.call('HSET', rk, 'state', 'DUPLICATE', 'reason', reason, 'duplicate_of', active)
    redis.call('SADD', p .. 'st:DUPLICATE', id)
    redis.call('RPUSH', p .. 'h:' .. id,
      cjson.encode({at = now_iso, from = '', to = 'DUPLICATE', reason = reason}))
    redis.call('ZADD', p .. 'finished', now, id)
    local ttl = math.floor(tonumber(ARGV[10]) + 86400)
    redis.call('EXPIRE', rk, ttl)
    redis.call('EXPIRE', p .. 'h:' .. id, ttl)
    redis.call('HINCRBY', p .. 'metrics:outcomes', 'DUPLICATE', 1)
    local hk = p .. 'chart:out:' .. math.floor(now / 3600)
    redis.call('HINCRBY', hk, 'DUPLICATE', 1)
    redis.call('EXPIRE', hk, 180000)
    -- the console's indexes of rebooks with an outcome (worker/core/search.py; see transition.lua)
    redis.call('ZADD', p .. 'ix:book:' .. bid, now, id)
    redis.call('ZADD', p .. 'ix:user:' .. uid, now, id)
    if pid ~= '' then redis.call('ZADD', p .. 'ix:perf:' .. pid, now, id) end
    redis.call('XADD', p .. 'outcomes', '*', 'rebook_id', id, 'event_id', eid,
      'state', 'DUPLICATE', 'booking_id', bid, 'new_booking_id', '', 'accept_by', '',
      'status', '', 'reason', reason, 'at', now_iso,
      'detail', cjson.encode({duplicate_of = active}))
    return {'duplicate', active}
  end
end
redis.call('SET', ak, id)
redis.call('HSET', rk, 'state', 'WAITING', 'reason', 'received')
redis.call('SADD', p .. 'st:WAITING', id)
redis.call('SADD', p .. 'user:' .. uid, id)
redis.call('ZADD', p .. 'due', tonumber(ARGV[12]), id)
local dispatch = '0'
if pid ~= '' then
  redis.call('SADD', p .. 'perf:' .. pid, id)
  if redis.call('ZADD', p .. 'performers', 'NX', now + tonumber(ARGV[11]), pid) == 1 then
    dispatch = '1'
  end
end
return {'created', dispatch}
