-- Shared prelude, prepended to reserve_tokens.lua and replace_reservation.lua (loaded by
-- RedisQuotaStore).
--
-- Window counters are hashes {used, reserved, exp}: exp is the expire-at (ms) the counter was
-- last given, kept so that a call asking for no later expiry (nearly every call: a window's
-- expiry is fixed) costs no PEXPIREAT. A counter's expiry only ever moves later, so it outlives
-- every window and hold any call asked for; a counter never exists without one.
--
-- counter_add(counter, field, amount, expire_at, found, exp): add amount to field of counter;
-- found tells whether the counter exists, exp is its recorded expire-at (false if none, as in
-- counters written before expiries were recorded). A counter that does not exist is created
-- with its expiry (amount must then be positive, or nothing would need it).

local function counter_add(counter, field, amount, expire_at, found, exp)
  if not found then
    redis.call('HSET', counter, field, amount, 'exp', expire_at)
    redis.call('PEXPIREAT', counter, expire_at)
    return
  end
  if amount ~= 0 then
    redis.call('HINCRBY', counter, field, amount)
  end
  if not exp or tonumber(exp) < tonumber(expire_at) then
    redis.call('HSET', counter, 'exp', expire_at)
    redis.call('PEXPIREAT', counter, expire_at)
  end
end
