-- Takes the next message from the first non-empty queue list AND records it as unacknowledged,
-- in one atomic step. kombu's Redis transport pops with BRPOP and records in a second command;
-- Redis stopping in between (or before the BRPOP reply left the server) loses the message.
-- Here a lost reply leaves the message in `unacked`, restored after the visibility timeout.
-- KEYS: 1 unacked hash, 2 unacked index (zset), 3.. queue lists in the order to try them
-- ARGV: 1 now (epoch seconds, the index score kombu uses),
--       2 one character per queue list: '1' record what it gives, '0' do not (a queue consumed
--         with no_ack, e.g. a pidbox reply queue: kombu never records those, and nobody acks them)
-- Returns {queue key, message, recorded (1 or 0)}, or false when every list is empty.
local function text(value)
  if type(value) == 'string' then return value end
  return ''
end

local flags = ARGV[2] or ''
for i = 3, #KEYS do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    if string.sub(flags, i - 2, i - 2) == '0' then
      return {KEYS[i], item, 0}
    end
    local ok, message = pcall(cjson.decode, item)
    local props = ok and type(message) == 'table' and message['properties']
    local tag = type(props) == 'table' and props['delivery_tag']
    if type(tag) == 'string' and tag ~= '' then
      local info = props['delivery_info']
      if type(info) ~= 'table' then info = {} end
      local record = '[' .. item .. ',' .. cjson.encode(text(info['exchange'])) .. ','
        .. cjson.encode(text(info['routing_key'])) .. ']'
      redis.call('HSET', KEYS[1], tag, record)
      redis.call('ZADD', KEYS[2], ARGV[1], tag)
      return {KEYS[i], item, 1}
    end
    -- not recorded (no delivery tag, or too deep for cjson): the consumer dead-letters it, or
    -- records it or puts it back itself
    return {KEYS[i], item, 0}
  end
end
return false
