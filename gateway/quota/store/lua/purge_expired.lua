-- Shared prelude, prepended to the scripts that purge (loaded by RedisQuotaStore).
--
-- release_reservation(index, record, rid): take one reservation back out of the window
-- counters its record names, and drop the record and its index entry. Records name counters
-- by full key; those keys share the team's hash tag, so they live in the calling script's
-- cluster slot. A counter that already expired is left alone, so this never creates a key
-- without a TTL.
--
-- purge_expired(index, record_prefix, now_ms): release the reservations of a team whose
-- hold-until has passed (their replica died or never settled).

local function release_reservation(index, record, rid)
  local fields = redis.call('HGETALL', record)
  for j = 1, #fields, 2 do
    if redis.call('EXISTS', fields[j]) == 1 then
      redis.call('HINCRBY', fields[j], 'reserved', -tonumber(fields[j + 1]))
    end
  end
  redis.call('DEL', record)
  redis.call('ZREM', index, rid)
end

local function purge_expired(index, record_prefix, now)
  local expired = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 200)
  for _, rid in ipairs(expired) do
    release_reservation(index, record_prefix .. rid, rid)
  end
end
