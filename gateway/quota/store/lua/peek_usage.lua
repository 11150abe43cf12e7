-- Read what a team has used and reserved in some windows, after purging expired reservations.
--
-- KEYS[1]     reservation index of the team
-- KEYS[2..]   window counters (hash: used, reserved, exp)
-- ARGV[1]     now, ms
-- ARGV[2]     key prefix of reservation records
--
-- Returns {used_1, reserved_1, used_2, reserved_2, ...}.

purge_expired(KEYS[1], ARGV[2], tonumber(ARGV[1]))

local out = {}
for i = 2, #KEYS do
  local counter = redis.call('HMGET', KEYS[i], 'used', 'reserved')
  out[#out + 1] = tonumber(counter[1]) or 0
  out[#out + 1] = tonumber(counter[2]) or 0
end
return out
