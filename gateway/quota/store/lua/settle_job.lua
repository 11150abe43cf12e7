-- Settle an open job (background response or batch) exactly once: take it out of the team's
-- open jobs and replace its reservation by what it used, in one step. A caller that finds the
-- job gone (another replica settled it) changes nothing; a crash cannot fall between the
-- claim and the charge.
--
-- KEYS[1]     the team's open jobs (hash: job id -> record)
-- KEYS[2]     reservation index of the team (zset: request id -> hold-until, ms)
-- KEYS[3]     the job's reservation record
-- KEYS[4..]   window counters (hash: used, reserved), one per charge
-- ARGV[1]     job id
-- ARGV[2]     the job's request id (its reservation's id)
-- ARGV[3+3i..5+3i] per charge i (0-based): amount reserved, amount to charge, counter
--             expire-at (ms)
--
-- Returns 1 if this call settled the job, 0 if it was not open.

if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local open = redis.call('ZSCORE', KEYS[2], ARGV[2])
local n = #KEYS - 3
for i = 1, n do
  local base = 3 + 3 * (i - 1)
  local reserved = tonumber(ARGV[base])
  local charge = tonumber(ARGV[base + 1])
  local counter = KEYS[i + 3]
  if open and reserved > 0 and redis.call('EXISTS', counter) == 1 then
    redis.call('HINCRBY', counter, 'reserved', -reserved)
  end
  if charge > 0 then
    redis.call('HINCRBY', counter, 'used', charge)
    redis.call('PEXPIREAT', counter, ARGV[base + 2])
  end
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
