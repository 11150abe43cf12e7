-- A cache lookup that takes the single-flight lock on a miss, in one round trip
-- (RedisCacheBackend.get_or_lock).
-- KEYS[1]  the entry key  (<prefix>:cache:v1:<scope>:{<sha256>})
-- KEYS[2]  the lock key   (<prefix>:cachelock:v1:<scope>:{<sha256>}); same hash tag, same slot
-- ARGV[1]  the owner token to write into the lock
-- ARGV[2]  the lock's lifetime, ms
-- Returns  {entry, 0} on a hit; {nil, 1} on a miss with the lock taken; {nil, 0} on a miss
--          while another request holds the lock.
local entry = redis.call('GET', KEYS[1])
if entry then
  return {entry, 0}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {false, 1}
end
-- Our own token: this call was resent after its first run took the lock (its reply was lost).
if redis.call('GET', KEYS[2]) == ARGV[1] then
  return {false, 1}
end
return {false, 0}
