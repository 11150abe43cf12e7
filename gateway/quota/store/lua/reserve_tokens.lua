-- Check every window of a request and reserve in all of them, or in none, telling a spent
-- budget (exhausted) apart from one that open reservations hold (congested).
--
-- KEYS[1]     reservation index of the team (zset: request id -> hold-until, ms)
-- KEYS[2]     this request's reservation record (hash: window counter key -> amount)
-- KEYS[3]     the team's "someone waits" flag (settlements publish while it exists)
-- KEYS[4..]   window counters (hash: used, reserved, exp), one per charge
-- ARGV[1]     now, ms
-- ARGV[2]     hold-until of this reservation, ms (after it, the reservation stops counting)
-- ARGV[3]     requested per-choice output budget, tokens
-- ARGV[4]     smallest useful output budget, tokens
-- ARGV[5]     key prefix of reservation records (to purge expired ones)
-- ARGV[6]     request id
-- ARGV[7]     1: last try (clamp by what reservations leave); 0: congestion is an answer
-- ARGV[8]     how long the waiting flag lives, ms
-- ARGV[9+4i..12+4i] per charge i (0-based): limit, fixed, per_output, counter expire-at (ms)
--
-- Returns {state, output, blocked (1-based charge index or 0), remaining_1..n}, where state
-- is 1 granted, 0 exhausted (settled usage alone leaves too little), 2 congested (it would
-- fit, but open reservations stand in the way). Remaining: after the reservation when
-- granted, before it otherwise, reservations included.
--
-- The output is clamped by what settled usage leaves; by what reservations leave only on the
-- last try. Expired reservations of the team are purged first (purge_expired.lua). Counters
-- are written by counter_add (counters.lua).
--
-- A reserve that runs twice for one request replaces its first run instead of adding to it:
-- a client library resends a call whose connection dropped before the reply came (redis-py
-- does, on a cluster node or a server that went away), and the first run may have happened.

local now = tonumber(ARGV[1])

purge_expired(KEYS[1], ARGV[5], now)
if redis.call('ZSCORE', KEYS[1], ARGV[6]) then
  release_reservation(KEYS[1], KEYS[2], ARGV[6])
end

local hold_until = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local minimum = math.min(tonumber(ARGV[4]), requested)
local last_try = ARGV[7] == '1'
local n = #KEYS - 3
local output = requested
local binding = 0
local unspent = {}
local remaining = {}

local function answer(state, blocked)
  local reply = {state, 0, blocked}
  for k = 1, n do reply[3 + k] = remaining[k] end
  return reply
end

local found = {}
local expiry = {}

for i = 1, n do
  local counter = redis.call('HMGET', KEYS[i + 3], 'used', 'reserved', 'exp')
  found[i] = counter[1] or counter[2] or counter[3]
  expiry[i] = counter[3]
  unspent[i] = tonumber(ARGV[9 + 4 * (i - 1)]) - (tonumber(counter[1]) or 0)
  remaining[i] = unspent[i] - (tonumber(counter[2]) or 0)
end

for i = 1, n do
  local base = 9 + 4 * (i - 1)
  local fixed = tonumber(ARGV[base + 1])
  local per_output = tonumber(ARGV[base + 2])
  if unspent[i] < fixed + per_output * minimum then
    return answer(0, i)
  end
  if per_output > 0 then
    local cap = math.floor((unspent[i] - fixed) / per_output)
    if cap < output then
      output = cap
      binding = i
    end
  end
end

for i = 1, n do
  local base = 9 + 4 * (i - 1)
  local fixed = tonumber(ARGV[base + 1])
  local per_output = tonumber(ARGV[base + 2])
  if remaining[i] < fixed + per_output * output then
    if not last_try or remaining[i] < fixed + per_output * minimum then
      redis.call('SET', KEYS[3], '1', 'PX', ARGV[8])
      return answer(2, i)
    end
    output = math.floor((remaining[i] - fixed) / per_output)
    binding = i
  end
end

local result = {1, output, binding}
local record = {}
for i = 1, n do
  local base = 9 + 4 * (i - 1)
  local amount = tonumber(ARGV[base + 1]) + tonumber(ARGV[base + 2]) * output
  if amount > 0 or found[i] then
    counter_add(KEYS[i + 3], 'reserved', amount, ARGV[base + 3], found[i], expiry[i])
  end
  if amount > 0 then
    record[#record + 1] = KEYS[i + 3]
    record[#record + 1] = amount
  end
  result[3 + i] = remaining[i] - amount
end

if #record > 0 then
  redis.call('HSET', KEYS[2], unpack(record))
  redis.call('ZADD', KEYS[1], hold_until, ARGV[6])
  -- The record outlives its hold so a purge can still read it; a day is plenty.
  redis.call('PEXPIREAT', KEYS[2], hold_until + 86400000)
  -- The index lives as long as its longest-lived record. Extended an hour beyond that, so
  -- the calls of the next hour need not extend it again.
  local wanted = hold_until + 86400000 - now
  if redis.call('PTTL', KEYS[1]) < wanted then
    redis.call('PEXPIRE', KEYS[1], wanted + 3600000)
  end
end

return result
