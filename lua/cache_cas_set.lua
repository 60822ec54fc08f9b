-- Store a rebuilt cache value only if no invalidation happened since the rebuilder
-- read the key's version (before its database read). Closes the cache-aside race in
-- which a slow reader writes back a value older than a concurrent update.
-- An optional guard set limits logical (TTL-less) keys to the current hot set.
-- KEYS: value key, version key, [guard set]
-- ARGV: expected version ('' = none), value, ttl ms (0 = no expiry), [guard member]
-- Returns 1 stored, 0 version changed, -1 not in the guard set.
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[1] then return 0 end
if KEYS[3] and redis.call('SISMEMBER', KEYS[3], ARGV[4]) == 0 then return -1 end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
