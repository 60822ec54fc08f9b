-- Operator's force release (RLock.force_release): delete the lock whoever
-- holds it and wake the waiters. KEYS[1] lock key; ARGV[1] unlock channel.
-- Returns 1 if a lock was deleted, 0 if there was none.
if redis.call('del', KEYS[1]) == 1 then
  redis.call('publish', ARGV[1], '0')
  return 1
end
return 0
