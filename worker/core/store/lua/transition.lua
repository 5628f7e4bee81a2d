-- Atomic state change of one rebook: compare-and-set on its state (and optional guard fields),
-- field updates, state indexes, history, due index, performer index and the outcome stream.
-- ARGV: 1 prefix, 2 rebook id (or several, comma-separated: one call for a batch),
--       3 allowed from-states (comma list or "*"), 4 to-state,
--       5 now (unix seconds), 6 now ISO-Z, 7 reason, 8 due ("" keep, "-" remove, else score),
--       9 outcome state ("" none), 10 retention seconds, 11 fields JSON, 12 guards JSON,
--       13 detail JSON, 14 lease seconds, 15 "gate" to take the member+performer gate,
--       "gate_member" to take the member's gate (no other POST of the member unsettled, whatever
--       its performer: the performer field is unconfirmed, worker/core/flow/reschedule.py),
--       16 "" or a time: a field given as "=TIME" is set to Redis's own clock (`TIME`; the one
--       clock the exactly-once proof is timed on), or to this time (a simulation's server clock)
-- Returns, for one id, {1, previous state} on success, {0, current state or ""} when refused, and
-- {0, "gate:" .. holder} when another rebook of the same member and performer has an unsettled
-- POST (reconciliation could not tell their bookings apart, so they never overlap): "POST sent"
-- set and no booking found, whatever its state. For several
-- ids it returns one 1/0 per id. A single id's success carries, third, the "=TIME" stamp it wrote.
local p = ARGV[1]
local guards = cjson.decode(ARGV[12])
local fields = cjson.decode(ARGV[11])
local to, now, now_iso, reason = ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
-- the server's time to the millisecond, written as Python's repr writes that float (the flow
-- compares marks as strings): "1765000000.12", "1765000000.0"
local stamp = nil
local function server_now()
  if stamp then return stamp end
  if (ARGV[16] or '') ~= '' then
    stamp = ARGV[16]
  else
    local t = redis.call('TIME')
    local frac = string.format('%03d', math.floor(tonumber(t[2]) / 1000)):gsub('0+$', '')
    if frac == '' then frac = '0' end
    stamp = t[1] .. '.' .. frac
  end
  return stamp
end
-- ACTIVE and STEP: the state sets of worker/core/states.py, prepended by the store's loader
local function is_terminal(s)
  return not ACTIVE[s]
end

-- the record fields this script reads, fetched once per rebook (one HMGET, not a dozen HGETs)
local NAMES = {'state', 'user_id', 'performer_id', 'booking_id', 'post_sent_ts', 'event_id',
  'new_booking_id', 'accept_by', 'status', 'created_ts', 'updated_ts', 'reason', 'history_at'}
local allowed = nil
if ARGV[3] ~= '*' then
  allowed = {}
  for s in string.gmatch(ARGV[3], '[^,]+') do allowed[s] = true end
end
-- the outcome counters (metrics, charts), added once per call at the end: a batch of GAVE_UPs
-- costs one HINCRBY per counter, not one per rebook (3 commands per rebook less)
local counters, counter_keys = {}, {}
local function count(key, field, ttl)
  local c = counters[key]
  if not c then
    c = {ttl = ttl, fields = {}, by = {}}
    counters[key] = c
    counter_keys[#counter_keys + 1] = key
  end
  if not c.by[field] then
    c.by[field] = 0
    c.fields[#c.fields + 1] = field
  end
  c.by[field] = c.by[field] + 1
end

-- the index writes of the whole call (state sets, performer sets, due, finished, the console's
-- indexes), one command per key at the end (`flush`): a batch of 1,000 GAVE_UPs leaves
-- `st:WAITING` with one SREM, not 1,000. Nothing in this script reads these keys, and no two
-- writes of one call to one key conflict (every id of a call goes to the same state).
local later_ops, later_list = {}, {}
local function later(cmd, key, flag, ...)
  local name = cmd .. ' ' .. (flag or '') .. ' ' .. key
  local op = later_ops[name]
  if not op then
    op = {cmd = cmd, key = key, flag = flag, args = {}}
    later_ops[name] = op
    later_list[#later_list + 1] = op
  end
  local args = op.args
  for i = 1, select('#', ...) do args[#args + 1] = select(i, ...) end
end

-- a history entry depends only on the state it leaves (the same for a whole batch)
local entries = {}
local function history_entry(cur)
  local entry = entries[cur]
  if not entry then
    entry = cjson.encode({at = now_iso, from = cur, to = to, reason = reason})
    entries[cur] = entry
  end
  return entry
end

local function apply(id)
  local rk = p .. 'r:' .. id
  local vals = redis.call('HMGET', rk, unpack(NAMES))
  local rec = {}
  for i, name in ipairs(NAMES) do rec[name] = vals[i] end
  local cur = rec.state
  if not cur then return {0, ''} end
  if allowed and not allowed[cur] then return {0, cur} end
  for f, v in pairs(guards) do
    local have = redis.call('HGET', rk, f) or ''
    if have ~= v then return {0, cur} end
  end
  local hk = p .. 'h:' .. id
  local uid = rec.user_id or ''
  local gate = p .. 'gate:' .. uid .. ':' .. (rec.performer_id or '')
  -- the member's gate and the member's posted set (performer ''): a rebook always has a
  -- performer by the time it POSTs, so these names are free for the member-wide scope
  local mgate = p .. 'gate:' .. uid .. ':'
  local mposted = p .. 'posted:' .. uid .. ':'
  if ARGV[15] == 'gate' or ARGV[15] == 'gate_member' then
    -- held while the holder's POST is unsettled, in any state: a cancelled rebook whose POST
    -- may have made a booking still holds it (its booking would look like ours)
    local function unsettled(holder)
      if not holder or holder == id then return false end
      local held = redis.call('HMGET', p .. 'r:' .. holder, 'post_sent_ts', 'new_booking_id')
      return (held[1] or '') ~= '' and (held[2] or '') == ''
    end
    -- the pair's gate, and the member's (a member-wide POST blocks every performer's)
    local candidates = {redis.call('GET', gate), redis.call('GET', mgate)}
    if ARGV[15] == 'gate_member' then
      -- every POST of the member that may be unsettled, whichever performer's gate it took
      for _, other in ipairs(redis.call('SMEMBERS', mposted)) do
        candidates[#candidates + 1] = other
      end
    end
    for _, holder in ipairs(candidates) do
      if unsettled(holder) then return {0, 'gate:' .. holder} end
    end
    redis.call('SET', gate, id)
    if ARGV[15] == 'gate_member' then redis.call('SET', mgate, id) end
    -- who has ever POSTed for this member and performer without a booking to show for it: an
    -- unclaimed booking found later may be any of theirs (a lost mark); and for the member
    local posted = p .. 'posted:' .. uid .. ':' .. (rec.performer_id or '')
    local ttl = math.floor(tonumber(ARGV[10]) + 86400)
    redis.call('SADD', posted, id)
    redis.call('EXPIRE', posted, ttl)
    redis.call('SADD', mposted, id)
    redis.call('EXPIRE', mposted, ttl)
  end
  if is_terminal(cur) and not is_terminal(to) then
    -- an operator's retry of a finished rebook: it must own its booking again
    local ak = p .. 'active:' .. (rec.booking_id or '')
    local owner = redis.call('GET', ak)
    if owner and owner ~= id then return {0, 'active:' .. owner} end
    redis.call('SET', ak, id)
    redis.call('ZREM', p .. 'finished', id)
    redis.call('PERSIST', rk)
    redis.call('PERSIST', hk)
    redis.call('SADD', p .. 'user:' .. uid, id)
  end
  -- whether the gates can name this rebook: a gate is taken with the POST mark (start_post) and
  -- freed by the transition that settles the POST, so one that was settled (or never sent) when
  -- this call began holds none. (A gate left naming a settled rebook would block no one: see
  -- `unsettled` above.)
  local may_hold = ((rec.post_sent_ts or '') ~= '' and (rec.new_booking_id or '') == '')
    or ARGV[15] == 'gate' or ARGV[15] == 'gate_member'
  if rec.history_at then
    -- the entry the record implied (see `listless` below) goes to the list before this call
    -- changes the state and reason it is read from
    redis.call('RPUSH', hk, cjson.encode({at = rec.history_at, from = 'WAITING', to = cur,
      reason = rec.reason or ''}))
    redis.call('HDEL', rk, 'history_at')
    rec.history_at = false
  end
  for f, v in pairs(fields) do
    if v == '=TIME' then v = server_now() end
    if v == '' then
      redis.call('HDEL', rk, f)
      rec[f] = false
    else
      redis.call('HSET', rk, f, v)
      rec[f] = v
    end
  end
  local terminal = is_terminal(to)
  -- a rebook that goes from WAITING straight to a final state (the sweep's GAVE_UP) keeps its one
  -- entry in the record: `history_at` with its state and reason (Store.history), no list key
  local listless = cur ~= to and cur == 'WAITING' and terminal
    and (not rec.updated_ts or redis.call('EXISTS', hk) == 0)
  if listless then
    redis.call('HSET', rk, 'state', to, 'reason', reason, 'updated_ts', ARGV[5],
      'history_at', now_iso)
  else
    redis.call('HSET', rk, 'state', to, 'reason', reason, 'updated_ts', ARGV[5])
  end
  local pid = rec.performer_id or ''
  if cur ~= to then
    later('SREM', p .. 'st:' .. cur, nil, id)
    later('SADD', p .. 'st:' .. to, nil, id)
    if not listless then redis.call('RPUSH', hk, history_entry(cur)) end
    if cur == 'WAITING' and pid ~= '' then later('SREM', p .. 'perf:' .. pid, nil, id) end
    if to == 'NEEDS_ATTENTION' then redis.call('HSET', rk, 'resume_state', cur) end
  end
  if to == 'WAITING' and pid ~= '' then
    later('SADD', p .. 'perf:' .. pid, nil, id)
    later('ZADD', p .. 'performers', 'NX', now, pid)
  end
  if terminal then
    local ak = p .. 'active:' .. (rec.booking_id or '')
    if redis.call('GET', ak) == id then redis.call('DEL', ak) end
    later('SREM', p .. 'user:' .. (rec.user_id or ''), nil, id)
    later('ZREM', p .. 'due', nil, id)
    later('ZADD', p .. 'finished', nil, now, id)
    local ttl = math.floor(tonumber(ARGV[10]) + 86400)
    redis.call('EXPIRE', rk, ttl)
    if not listless then redis.call('EXPIRE', hk, ttl) end
  elseif ARGV[8] == '-' then
    later('ZREM', p .. 'due', nil, id)
  elseif ARGV[8] ~= '' then
    later('ZADD', p .. 'due', nil, tonumber(ARGV[8]), id)
  end
  -- the gate is free again once this rebook's POST is settled: booked, or proven not made
  if may_hold and ((rec.post_sent_ts or '') == '' or (rec.new_booking_id or '') ~= '') then
    if redis.call('GET', gate) == id then redis.call('DEL', gate) end
    if redis.call('GET', mgate) == id then redis.call('DEL', mgate) end
  end
  if (rec.new_booking_id or '') ~= '' and cur ~= to then
    redis.call('SREM', p .. 'posted:' .. uid .. ':' .. (rec.performer_id or ''), id)
    redis.call('SREM', mposted, id)
  end
  if ARGV[9] ~= '' then
    count(p .. 'metrics:outcomes', ARGV[9], nil)
    -- console (additive, read by nothing above): outcomes per hour (kept 50 h), received ->
    -- BOOKED seconds in fixed buckets per hour, and the member / performer / booking indexes of
    -- rebooks that have had an outcome (worker/core/search.py; housekeeping removes finished ids).
    -- A rebook before its first outcome is found through user:, perf: and active: instead, so
    -- a waiting rebook costs no byte here.
    local hour = math.floor(now / 3600)
    count(p .. 'chart:out:' .. hour, ARGV[9], 180000)
    local created = tonumber(rec.created_ts or '') or now
    if ARGV[9] == 'BOOKED' then
      local secs, bucket = now - created, 0
      for i, edge in ipairs({10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200}) do
        if secs > edge then bucket = i end
      end
      count(p .. 'chart:booked:' .. hour, tostring(bucket), 180000)
    end
    later('ZADD', p .. 'ix:user:' .. uid, 'NX', created, id)
    if pid ~= '' then later('ZADD', p .. 'ix:perf:' .. pid, 'NX', created, id) end
    if terminal then
      redis.call('ZADD', p .. 'ix:book:' .. (rec.booking_id or ''), 'NX', created, id)
    end
    redis.call('XADD', p .. 'outcomes', '*',
      'rebook_id', id, 'event_id', rec.event_id or '', 'state', ARGV[9],
      'booking_id', rec.booking_id or '', 'new_booking_id', rec.new_booking_id or '',
      'accept_by', rec.accept_by or '', 'status', rec.status or '',
      'reason', reason, 'at', now_iso, 'detail', ARGV[13])
  end
  return {1, cur}
end

local function flush()
  for _, op in ipairs(later_list) do
    local args = op.args
    for i = 1, #args, 1000 do  -- (an even count: ZADD's pairs stay whole)
      local j = math.min(i + 999, #args)
      if op.flag then
        redis.call(op.cmd, op.key, op.flag, unpack(args, i, j))
      else
        redis.call(op.cmd, op.key, unpack(args, i, j))
      end
    end
  end
  for _, key in ipairs(counter_keys) do
    local c = counters[key]
    for _, field in ipairs(c.fields) do redis.call('HINCRBY', key, field, c.by[field]) end
    if c.ttl then redis.call('EXPIRE', key, c.ttl) end
  end
end

local ids = {}
for one in string.gmatch(ARGV[2], '[^,]+') do ids[#ids + 1] = one end
if #ids == 1 then
  local result = apply(ids[1])
  flush()
  if stamp and result[1] == 1 then result[3] = stamp end
  return result
end
local results = {}
for i, one in ipairs(ids) do results[i] = apply(one)[1] end
flush()
return results
