-- Claims what is overdue, O(due): records in the due index and performers whose presence check is
-- due. Each claimed entry is pushed one lease ahead, so a dispatched step that is lost is claimed
-- again after the lease, and a step still running is not dispatched twice meanwhile.
-- ARGV: 1 prefix, 2 now, 3 lease seconds, 4 batch size
local p, now, lease, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', p .. 'due', '-inf', now, 'LIMIT', 0, n)
for _, id in ipairs(ids) do redis.call('ZADD', p .. 'due', 'XX', now + lease, id) end
local pids = redis.call('ZRANGEBYSCORE', p .. 'performers', '-inf', now, 'LIMIT', 0, n)
for _, pid in ipairs(pids) do
  redis.call('ZADD', p .. 'performers', 'XX', now + lease, pid)
end
redis.call('SET', p .. 'sweep:last', ARGV[2])
return {ids, pids}
