-- Add usage replayed from the access log to one window counter (`gateway usage restore`), at
-- most once per request: per gateway process (the request id prefix), the window's marks hold
-- the highest request sequence number already restored, and the caller sends only newer ones.
--
-- KEYS[1]  window counter (hash: used, reserved)
-- KEYS[2]  the window's restore marks (hash: process -> highest sequence restored)
-- ARGV[1]  process
-- ARGV[2]  the highest sequence restored so far, as the caller read it (-1: none)
-- ARGV[3]  the new highest sequence
-- ARGV[4]  amount to add to `used`
-- ARGV[5]  expire-at of counter and marks (ms)
--
-- Returns 1 when applied; 0, changing nothing, when the marks moved since the caller read
-- them (another restore ran meanwhile): the caller's amounts may overlap with it.

local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if current ~= tonumber(ARGV[2]) then
  return 0
end
local amount = tonumber(ARGV[4])
if amount > 0 then
  redis.call('HINCRBY', KEYS[1], 'used', amount)
  redis.call('PEXPIREAT', KEYS[1], ARGV[5])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('PEXPIREAT', KEYS[2], ARGV[5])
return 1
