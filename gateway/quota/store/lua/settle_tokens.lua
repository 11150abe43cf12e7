-- Replace a request's reservation by what it really used, in one step.
--
-- KEYS[1]     reservation index of the team (zset: request id -> hold-until, ms)
-- KEYS[2]     this request's reservation record
-- KEYS[3]     the team's "someone waits" flag (set by a congested reserve)
-- KEYS[4..]   window counters (hash: used, reserved, exp), one per charge
-- ARGV[1]     request id
-- ARGV[2]     channel that tells every replica a team's budget was freed
-- ARGV[3]     team
-- ARGV[4]     how long the record is kept as a "settled" tombstone (ms)
-- ARGV[5+3i..7+3i] per charge i (0-based): amount reserved, amount to charge, counter
--             expire-at (ms)
--
-- If the reservation already expired (and was purged), its amounts no longer count as
-- reserved; the usage is still charged: settling never under-counts. A settlement that ran
-- but whose reply was lost (the server died or the call timed out just after) is retried by
-- the gateway; the record's tombstone makes that resend charge nothing (replace_reservation.lua),
-- so it never over-counts either.
-- Publishes the team on the channel only while someone waits, so settling costs nothing extra
-- when nobody does. Returns 1 if the reservation was still open, 0 otherwise.

if replace_reservation(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], 4, 5, ARGV[4]) then
  return 1
end
return 0
