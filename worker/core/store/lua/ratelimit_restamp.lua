-- Moves one call's entry in the shared rate log to now (Redis's `TIME`, as ratelimit.lua): the
-- call is being sent now, later than the limiter let it by. Added back if it already left the
-- window: it counts from when it goes out.
-- KEYS: 1 the limiter key. ARGV: 1 the entry, 2 the key's lifetime in milliseconds.
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
