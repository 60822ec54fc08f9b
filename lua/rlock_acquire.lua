-- RLock (Redisson-style reentrant lock) acquire. The lock is one HASH
-- {owner_id: hold_count}; owner_id = process uuid + ":" + thread id.
-- Free, or already ours: add one hold and (re)set the lease.
-- KEYS[1] lock key; ARGV[1] lease ms; ARGV[2] owner id.
-- Returns nil when acquired; otherwise the lock's remaining PTTL in ms (the
-- waiter's fallback timeout if no unlock message arrives; -1 = no expiry).
if redis.call('exists', KEYS[1]) == 0 or redis.call('hexists', KEYS[1], ARGV[2]) == 1 then
  redis.call('hincrby', KEYS[1], ARGV[2], 1)
  redis.call('pexpire', KEYS[1], ARGV[1])
  return nil
end
return redis.call('pttl', KEYS[1])
