-- RLock release: drop one hold of ARGV[1]; at zero holds delete the lock and
-- PUBLISH on its unlock channel so that waiters retry at once.
-- KEYS[1] lock key; ARGV[1] owner id; ARGV[2] unlock channel (not a key: no
-- cross-slot issue in Redis Cluster).
-- Returns the remaining hold count (0 = released), or -1 if not held by ARGV[1].
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then
  return -1
end
local count = redis.call('hincrby', KEYS[1], ARGV[1], -1)
if count > 0 then
  return count
end
redis.call('del', KEYS[1])
redis.call('publish', ARGV[2], '0')
return 0
