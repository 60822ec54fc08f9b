-- Invalidate an entity after its database write: bump its version (so in-flight
-- rebuilds that read the old version cannot store the old value), delete its keys,
-- and publish to every process's near-cache, all atomically. Returns what the writer
-- needs to wait for acknowledgements: how many subscribers received the message and
-- how many near-cache processes are registered (heartbeat within the window).
-- KEYS: version key, generation counter, near members zset, key1 [, key2 ...]
-- ARGV: version ttl ms, channel, message, member window ms
-- Returns {receivers, members, deleted(key1), deleted(key2), ...}
local gen = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], gen, 'PX', ARGV[1])
local result = {0, 0}
for i = 4, #KEYS do
  result[#result + 1] = redis.call('DEL', KEYS[i])
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[4]))
result[2] = redis.call('ZCARD', KEYS[3])
result[1] = redis.call('PUBLISH', ARGV[2], ARGV[3])
return result
