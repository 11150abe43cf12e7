-- Undo one reservation by its record (RedisQuotaStore.cancel): for a reserve call whose reply
-- never arrived (a timeout), which Redis may still have run, or run later on waking up.
--
-- KEYS[1]  reservation index of the team
-- KEYS[2]  the request's reservation record (hash: window counter key -> amount)
-- ARGV[1]  request id
--
-- Returns 1 if a reservation was found and released, 0 if there was none (it never ran).
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
local fields = redis.call('HGETALL', KEYS[2])
for j = 1, #fields, 2 do
  if redis.call('EXISTS', fields[j]) == 1 then
    redis.call('HINCRBY', fields[j], 'reserved', -tonumber(fields[j + 1]))
  end
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
