-- Sliding-window rate limit shared by every worker: at most `limit` calls in any window.
-- KEYS: 1 the limiter key (a sorted set of call times, microseconds).
-- ARGV: 1 window in microseconds, 2 calls this one may find in the window and still go
--       (its share of the limit), 3 this call's entry (unique: `RateLog.restamp` moves it).
-- Returns 0 when the call may go now (and records it), else the wait in milliseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window, allowed = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < allowed then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
-- it may go once enough of the oldest calls have left the window
local oldest = redis.call('ZRANGE', KEYS[1], n - allowed, n - allowed, 'WITHSCORES')
return math.max(1, math.ceil((tonumber(oldest[2]) + window - now) / 1000))
