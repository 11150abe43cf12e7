-- Shared prelude, prepended to settle_tokens.lua and settle_job.lua after counters.lua (loaded
-- by RedisQuotaStore).
--
-- replace_reservation(index, record, waiting_flag, request_id, channel, team, first_counter,
-- first_arg, tombstone_ms): replace one reservation by what it used, in every window counter
-- KEYS[first_counter..] with the per-charge triples ARGV[first_arg + 3i ..] (amount reserved,
-- amount to charge, counter expire-at in ms). If the reservation already expired (and was
-- purged), its amounts no longer count as reserved; the usage is still charged: settling never
-- under-counts. While someone waits for the team's budget (the flag exists), the team is
-- published on `channel`. Returns whether the reservation was still open.
--
-- With tombstone_ms, the record is replaced by the string '!settled' for that long instead of
-- deleted (the same one write), and a call that finds the reservation gone but its tombstone
-- there changes nothing: it is a resend of a settlement that ran but whose reply was lost (a
-- client library resends after a dropped connection, the gateway retries), so it never
-- over-counts either. Looking costs a TYPE only when the reservation is not open.

local function replace_reservation(index, record, flag, request_id, channel, team, first_counter, first_arg, tombstone_ms)
  local open = redis.call('ZREM', index, request_id) == 1
  if not open and tombstone_ms and redis.call('TYPE', record).ok == 'string' then
    return false
  end
  for i = first_counter, #KEYS do
    local base = first_arg + 3 * (i - first_counter)
    local reserved = tonumber(ARGV[base])
    local charge = tonumber(ARGV[base + 1])
    local counter = KEYS[i]
    local release = open and reserved > 0
    if release or charge > 0 then
      local exp = redis.call('HGET', counter, 'exp')
      -- A counter written before expiries were recorded has no exp: ask whether it exists.
      local found = exp or redis.call('EXISTS', counter) == 1
      if release and found then
        redis.call('HINCRBY', counter, 'reserved', -reserved)
      end
      if charge > 0 then
        counter_add(counter, 'used', charge, ARGV[base + 2], found, exp)
      end
    end
  end
  if tombstone_ms then
    redis.call('SET', record, '!settled', 'PX', tombstone_ms)
  else
    redis.call('DEL', record)
  end
  if open and redis.call('EXISTS', flag) == 1 then
    redis.call('PUBLISH', channel, team)
  end
  return open
end
