-- Replace a request's reservation by what it really used, in one step.
--
-- KEYS[1]     reservation index of the team (zset: request id -> hold-until, ms)
-- KEYS[2]     this request's reservation record
-- KEYS[3..]   window counters (hash: used, reserved), one per charge
-- ARGV[1]     request id
-- ARGV[2+3i..4+3i] per charge i (0-based): amount reserved, amount to charge, counter
--             expire-at (ms)
--
-- If the reservation already expired (and was purged), its amounts no longer count as
-- reserved; the usage is still charged: settling never under-counts.
-- Returns 1 if the reservation was still open, 0 otherwise.

local open = redis.call('ZSCORE', KEYS[1], ARGV[1])
local n = #KEYS - 2
for i = 1, n do
  local base = 2 + 3 * (i - 1)
  local reserved = tonumber(ARGV[base])
  local charge = tonumber(ARGV[base + 1])
  local counter = KEYS[i + 2]
  if open and reserved > 0 and redis.call('EXISTS', counter) == 1 then
    redis.call('HINCRBY', counter, 'reserved', -reserved)
  end
  if charge > 0 then
    redis.call('HINCRBY', counter, 'used', charge)
    redis.call('PEXPIREAT', counter, ARGV[base + 2])
  end
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
if open then return 1 end
return 0
