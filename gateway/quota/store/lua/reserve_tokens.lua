-- Check every window of a request and reserve in all of them, or in none.
--
-- KEYS[1]     reservation index of the team (zset: request id -> hold-until, ms)
-- KEYS[2]     this request's reservation record (hash: window counter key -> amount)
-- KEYS[3..]   window counters (hash: used, reserved), one per charge
-- ARGV[1]     now, ms
-- ARGV[2]     hold-until of this reservation, ms (after it, the reservation stops counting)
-- ARGV[3]     requested per-choice output budget, tokens
-- ARGV[4]     smallest useful output budget, tokens
-- ARGV[5]     key prefix of reservation records (to purge expired ones)
-- ARGV[6]     request id
-- ARGV[7+4i..10+4i] per charge i (0-based): limit, fixed, per_output, counter expire-at (ms)
--
-- Returns {granted (1|0), output, blocked (1-based charge index or 0), remaining_1..n}:
-- remaining after the reservation when granted, before it when refused.
--
-- Expired reservations of the team are purged first (purge_expired.lua).

local now = tonumber(ARGV[1])

purge_expired(KEYS[1], ARGV[5], now)

local hold_until = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local minimum = math.min(tonumber(ARGV[4]), requested)
local n = #KEYS - 2
local output = requested
local binding = 0
local remaining = {}

for i = 1, n do
  local base = 7 + 4 * (i - 1)
  local limit = tonumber(ARGV[base])
  local fixed = tonumber(ARGV[base + 1])
  local per_output = tonumber(ARGV[base + 2])
  local counter = redis.call('HMGET', KEYS[i + 2], 'used', 'reserved')
  local left = limit - (tonumber(counter[1]) or 0) - (tonumber(counter[2]) or 0)
  remaining[i] = left
  if left < fixed then
    local refused = {0, 0, i}
    for k = 1, n do refused[3 + k] = remaining[k] or 0 end
    return refused
  end
  if per_output > 0 then
    local cap = math.floor((left - fixed) / per_output)
    if cap < output then
      output = cap
      binding = i
    end
  end
end

if output < minimum or output < 0 then
  local refused = {0, 0, binding}
  for k = 1, n do refused[3 + k] = remaining[k] end
  return refused
end

local result = {1, output, binding}
local recorded = false
for i = 1, n do
  local base = 7 + 4 * (i - 1)
  local amount = tonumber(ARGV[base + 1]) + tonumber(ARGV[base + 2]) * output
  if amount > 0 then
    redis.call('HINCRBY', KEYS[i + 2], 'reserved', amount)
    redis.call('HSET', KEYS[2], KEYS[i + 2], amount)
    recorded = true
  end
  redis.call('PEXPIREAT', KEYS[i + 2], ARGV[base + 3])
  result[3 + i] = remaining[i] - amount
end

if recorded then
  redis.call('ZADD', KEYS[1], hold_until, ARGV[6])
  -- The record outlives its hold so a purge can still read it; a day is plenty.
  redis.call('PEXPIREAT', KEYS[2], hold_until + 86400000)
  local index_ttl = redis.call('PTTL', KEYS[1])
  local wanted = hold_until + 86400000 - now
  if index_ttl < wanted then
    redis.call('PEXPIRE', KEYS[1], wanted)
  end
end

return result
