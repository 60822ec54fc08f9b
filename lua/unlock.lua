-- SimpleLock release: delete the lock only if it still holds our token, then
-- wake waiters on the unlock channel (the owner check and the DEL must be one
-- atomic step, or we could delete a lock that expired and was re-taken).
-- KEYS[1] lock key; ARGV[1] our token; ARGV[2] unlock channel.
-- Returns 1 if released, 0 if the lock is not ours (expired or someone else's).
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('publish', ARGV[2], '0')
  return 1
end
return 0
