-- Shared prelude, prepended to settle_tokens.lua and settle_job.lua (loaded by RedisQuotaStore).
--
-- replace_reservation(index, record, waiting_flag, request_id, channel, team, first_counter,
-- first_arg): replace one reservation by what it used, in every window counter KEYS[first_counter..]
-- with the per-charge triples ARGV[first_arg + 3i ..] (amount reserved, amount to charge,
-- counter expire-at in ms). If the reservation already expired (and was purged), its amounts
-- no longer count as reserved; the usage is still charged: settling never under-counts. While
-- someone waits for the team's budget (the flag exists), the team is published on `channel`.
-- Returns whether the reservation was still open.

local function replace_reservation(index, record, flag, request_id, channel, team, first_counter, first_arg)
  local open = redis.call('ZSCORE', index, request_id)
  for i = first_counter, #KEYS do
    local base = first_arg + 3 * (i - first_counter)
    local reserved = tonumber(ARGV[base])
    local charge = tonumber(ARGV[base + 1])
    local counter = KEYS[i]
    if open and reserved > 0 and redis.call('EXISTS', counter) == 1 then
      redis.call('HINCRBY', counter, 'reserved', -reserved)
    end
    if charge > 0 then
      redis.call('HINCRBY', counter, 'used', charge)
      redis.call('PEXPIREAT', counter, ARGV[base + 2])
    end
  end
  redis.call('DEL', record)
  redis.call('ZREM', index, request_id)
  if open and redis.call('EXISTS', flag) == 1 then
    redis.call('PUBLISH', channel, team)
  end
  return open
end
