-- Settle an open job (background response or batch) exactly once: take it out of the team's
-- open jobs and replace its reservation by what it used, in one step. A caller that finds the
-- job gone (another replica settled it) changes nothing; a crash cannot fall between the
-- claim and the charge. Otherwise as settle_tokens.lua (including the wake-up for waiters).
--
-- KEYS[1]     the team's open jobs (hash: job id -> record)
-- KEYS[2]     reservation index of the team (zset: request id -> hold-until, ms)
-- KEYS[3]     the job's reservation record
-- KEYS[4]     the team's "someone waits" flag
-- KEYS[5..]   window counters (hash: used, reserved, exp), one per charge
-- ARGV[1]     job id
-- ARGV[2]     the job's request id (its reservation's id)
-- ARGV[3]     channel that tells every replica a team's budget was freed
-- ARGV[4]     team
-- ARGV[5+3i..7+3i] per charge i (0-based): amount reserved, amount to charge, counter
--             expire-at (ms)
--
-- Returns 1 if this call settled the job, 0 if it was not open.

if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
replace_reservation(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4], 5, 5)
return 1
