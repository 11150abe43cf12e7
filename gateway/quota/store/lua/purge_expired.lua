-- Shared prelude, prepended to the scripts that purge (loaded by RedisQuotaStore).
--
-- purge_expired(index, record_prefix, now_ms): release the reservations of a team whose
-- hold-until has passed (their replica died or never settled). Records name counters by full
-- key; those keys share the team's hash tag, so they live in the calling script's cluster slot.
-- A counter that already expired is left alone, so a purge never creates a key without a TTL.

local function purge_expired(index, record_prefix, now)
  local expired = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 200)
  for _, rid in ipairs(expired) do
    local record = record_prefix .. rid
    local fields = redis.call('HGETALL', record)
    for j = 1, #fields, 2 do
      if redis.call('EXISTS', fields[j]) == 1 then
        redis.call('HINCRBY', fields[j], 'reserved', -tonumber(fields[j + 1]))
      end
    end
    redis.call('DEL', record)
    redis.call('ZREM', index, rid)
  end
end
