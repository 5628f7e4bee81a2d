-- A presence check that made no call (the rate budget went to POSTs) gives its turn back: the
-- performer goes back to the due time it was claimed at (`presence:place`, written by the
-- sweep), not to the end of the line, so the least recently polled still goes first.
-- ARGV: 1 prefix, 2 performer id, 3 now, 4 lease seconds
local p, pid = ARGV[1], ARGV[2]
local now, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('SCARD', p .. 'perf:' .. pid) == 0 then
  redis.call('ZREM', p .. 'performers', pid)
  redis.call('HDEL', p .. 'presence:place', pid)
  return 0
end
local score = tonumber(redis.call('ZSCORE', p .. 'performers', pid) or '')
local place = tonumber(redis.call('HGET', p .. 'presence:place', pid) or '')
if score == nil then
  redis.call('ZADD', p .. 'performers', place or now, pid)
elseif score > now + lease / 2 then
  -- claimed (pushed one lease ahead): back to where it was; sent by intake: its creation time
  redis.call('ZADD', p .. 'performers', math.min(place or (score - lease), now), pid)
end
return 1
