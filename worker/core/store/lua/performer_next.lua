-- After a presence check: schedule the next one while rebooks still wait on the performer,
-- forget the performer otherwise. ARGV: 1 prefix, 2 performer id, 3 next check score
local p, pid = ARGV[1], ARGV[2]
if redis.call('SCARD', p .. 'perf:' .. pid) == 0 then
  redis.call('ZREM', p .. 'performers', pid)
  redis.call('HDEL', p .. 'presence:place', pid)
  return 0
end
redis.call('ZADD', p .. 'performers', tonumber(ARGV[3]), pid)
return 1
