-- GCRA rate limit shared by every worker: returns 0 when a call may go now, else the wait in ms.
-- KEYS: 1 the limiter key. ARGV: 1 emission interval ms, 2 burst tolerance ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - burst - now
if wait > 0 then return wait end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(burst + interval) + 1000)
return 0
