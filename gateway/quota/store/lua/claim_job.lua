-- Take one open job (background response or batch) for settlement: exactly one caller, on any
-- replica, gets its record; every other gets nil and settles nothing.
--
-- KEYS[1]  the team's open jobs (hash: job id -> record)
-- ARGV[1]  job id
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return record
