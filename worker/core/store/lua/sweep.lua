-- Claims what is overdue, O(due): records in the due index and performers whose presence check is
-- due. Each claimed entry is pushed one lease ahead, so a dispatched step that is lost is claimed
-- again after the lease, and a step still running is not dispatched twice meanwhile.
-- Performers due within `ahead` seconds are claimed too, with their due time, so that their
-- check can be sent to run on time rather than at the next sweep (one lease past that time).
-- At most `plimit` performers are claimed, the longest due first (the presence budget of one
-- sweep): the rest keep their place for the next sweep. Each claimed one's due time is kept in
-- the hash `presence:place`, so that a check that gives its turn back (presence_keep.lua) goes
-- back to the same place in the line.
-- ARGV: 1 prefix, 2 now, 3 lease seconds, 4 batch size, 5 ahead seconds, 6 performer limit
-- Returns {rebook ids, performer ids, their due times}
local p, now, lease, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ahead = tonumber(ARGV[5] or '0')
local plimit = tonumber(ARGV[6] or ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', p .. 'due', '-inf', now, 'LIMIT', 0, n)
local claims = {}  -- one ZADD per 500 claimed, not one per id
for _, id in ipairs(ids) do
  claims[#claims + 1] = now + lease
  claims[#claims + 1] = id
end
for i = 1, #claims, 1000 do
  redis.call('ZADD', p .. 'due', 'XX', unpack(claims, i, math.min(i + 999, #claims)))
end
local found = redis.call('ZRANGEBYSCORE', p .. 'performers', '-inf', now + ahead, 'WITHSCORES',
  'LIMIT', 0, plimit)
local pids, ats = {}, {}
for i = 1, #found, 2 do
  local at, at_text = tonumber(found[i + 1]), found[i + 1]
  redis.call('HSET', p .. 'presence:place', found[i], at_text)
  if at < now then at, at_text = now, ARGV[2] end
  pids[#pids + 1] = found[i]
  ats[#ats + 1] = at_text
  redis.call('ZADD', p .. 'performers', 'XX', at + lease, found[i])
end
redis.call('SET', p .. 'sweep:last', ARGV[2])
return {ids, pids, ats}
