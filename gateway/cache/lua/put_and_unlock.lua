-- Store an entry and release our single-flight lock, in one round trip
-- (RedisCacheBackend.put_and_unlock).
-- KEYS[1]  the entry key
-- KEYS[2]  the lock key (same hash tag)
-- ARGV[1]  the encoded entry
-- ARGV[2]  its time to live, seconds
-- ARGV[3]  our owner token: a lock taken over by someone else after expiry is left alone
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
