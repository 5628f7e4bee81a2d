-- A step takes its rebook: writes its fencing token into the record (only if the record exists:
-- HSET would create a partial one) and returns the record, in one round trip.
-- KEYS: 1 record hash; ARGV: 1 token. Returns the record as a flat list, or {} if it is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSET', KEYS[1], 'claim', ARGV[1])
return redis.call('HGETALL', KEYS[1])
