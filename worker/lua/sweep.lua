-- Claims what is overdue, O(due): records in the due index and performers whose presence check is
-- due. Each claimed entry is pushed one lease ahead, so a dispatched step that is lost is claimed
-- again after the lease, and a step still running is not dispatched twice meanwhile.
-- Performers due within `ahead` seconds are claimed too, with their due time, so that their
-- check can be sent to run on time rather than at the next sweep (one lease past that time).
-- ARGV: 1 prefix, 2 now, 3 lease seconds, 4 batch size, 5 ahead seconds
-- Returns {rebook ids, performer ids, their due times}
local p, now, lease, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ahead = tonumber(ARGV[5] or '0')
local ids = redis.call('ZRANGEBYSCORE', p .. 'due', '-inf', now, 'LIMIT', 0, n)
for _, id in ipairs(ids) do redis.call('ZADD', p .. 'due', 'XX', now + lease, id) end
local found = redis.call('ZRANGEBYSCORE', p .. 'performers', '-inf', now + ahead, 'WITHSCORES',
  'LIMIT', 0, n)
local pids, ats = {}, {}
for i = 1, #found, 2 do
  local at, at_text = tonumber(found[i + 1]), found[i + 1]
  if at < now then at, at_text = now, ARGV[2] end
  pids[#pids + 1] = found[i]
  ats[#ats + 1] = at_text
  redis.call('ZADD', p .. 'performers', 'XX', at + lease, found[i])
end
redis.call('SET', p .. 'sweep:last', ARGV[2])
return {ids, pids, ats}
