-- Learns which key of a booking's `Performer` object names the performer's user id, from one
-- answer whose meaning is known (worker/core/flow/performer.py `Performer.learn`): a booking that is, for certain,
-- of performer ARGV[1]. One hash, KEYS[1] (`{prefix}shape:performer`):
--   n:{key} agreeing answers, b:{key} their booking ids (comma list, capped: an answer read twice
--   counts once), p:{key} the distinct performers (comma list, capped), c contradictions seen,
--   last the last contradiction (JSON), confirmed the confirmed key (absent: none).
-- ARGV: 1 performer id, 2 booking id, 3 now, 4 answers needed, 5 performers needed,
--       6 JSON list of the keys whose value is this performer id, 7 JSON object of every key's
--       value as text (for the contradiction's note).
-- A tracked key that this answer does not name the performer under (absent, or another value)
-- is contradicted: its counts go, and if it was the confirmed key, so does the confirmation.
-- Returns {confirmed key or "", "confirmed" | "dropped" | ""}.
local h = KEYS[1]
local pid, bid, now = ARGV[1], ARGV[2], ARGV[3]
local need_answers, need_performers = tonumber(ARGV[4]), tonumber(ARGV[5])
local matched = cjson.decode(ARGV[6])
local values = cjson.decode(ARGV[7])
local CAP = 16
local before = redis.call('HGET', h, 'confirmed') or ''

local function list(field)
  local out = {}
  local raw = redis.call('HGET', h, field)
  if raw then
    for one in string.gmatch(raw, '[^,]+') do out[#out + 1] = one end
  end
  return out
end

local function contains(items, value)
  for _, one in ipairs(items) do
    if one == value then return true end
  end
  return false
end

local is_match = {}
for _, key in ipairs(matched) do is_match[key] = true end

-- contradictions: every tracked key this answer does not agree with
local fields = redis.call('HKEYS', h)
for _, f in ipairs(fields) do
  if string.sub(f, 1, 2) == 'n:' then
    local key = string.sub(f, 3)
    if not is_match[key] then
      redis.call('HDEL', h, 'n:' .. key, 'b:' .. key, 'p:' .. key)
      redis.call('HINCRBY', h, 'c', 1)
      local got = values[key]
      if got == nil then got = cjson.null end
      redis.call('HSET', h, 'last', cjson.encode({
        key = key, expected = pid, got = got, booking_id = bid, at = tonumber(now)}))
      if before == key then redis.call('HDEL', h, 'confirmed') end
    end
  end
end

-- agreement: one more answer (a booking not counted yet) and maybe one more performer
for _, key in ipairs(matched) do
  local booked = list('b:' .. key)
  if not contains(booked, bid) then
    redis.call('HINCRBY', h, 'n:' .. key, 1)
    if #booked < CAP then
      booked[#booked + 1] = bid
      redis.call('HSET', h, 'b:' .. key, table.concat(booked, ','))
    end
  end
  local seen = list('p:' .. key)
  if not contains(seen, pid) and #seen < CAP then
    seen[#seen + 1] = pid
    redis.call('HSET', h, 'p:' .. key, table.concat(seen, ','))
  end
end

local current = redis.call('HGET', h, 'confirmed') or ''
if current == '' then
  local best, best_n = '', 0
  table.sort(matched)
  for _, key in ipairs(matched) do
    local n = tonumber(redis.call('HGET', h, 'n:' .. key) or '0')
    if n >= need_answers and #list('p:' .. key) >= need_performers and n > best_n then
      best, best_n = key, n
    end
  end
  if best ~= '' then
    redis.call('HSET', h, 'confirmed', best, 'confirmed_at', now)
    current = best
  end
end
local change = ''
if current ~= before then
  if current == '' then change = 'dropped' else change = 'confirmed' end
end
return {current, change}
