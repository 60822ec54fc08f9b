-- SimpleLock extend: add time to the lock's remaining TTL, only if it still
-- holds our token (atomic owner check, like unlock.lua).
-- KEYS[1] lock key; ARGV[1] our token; ARGV[2] milliseconds to add.
-- Returns the new TTL in ms, or 0 if the lock is not ours.
if redis.call('get', KEYS[1]) == ARGV[1] then
  local ttl = redis.call('pttl', KEYS[1])
  if ttl < 0 then ttl = 0 end
  local new_ttl = ttl + tonumber(ARGV[2])
  redis.call('pexpire', KEYS[1], new_ttl)
  return new_ttl
end
return 0
