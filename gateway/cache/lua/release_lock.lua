-- Release a single-flight lock only if we still own it (RedisCacheBackend.release_lock).
-- KEYS[1]  the lock key (<prefix>:cachelock:v1:<scope>:<sha256>)
-- ARGV[1]  the owner token written by SET NX PX when the lock was acquired
-- Returns  1 if the lock was ours and is now deleted, 0 otherwise (expired, or taken over by
--          another owner after expiry: their lock is left alone).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
