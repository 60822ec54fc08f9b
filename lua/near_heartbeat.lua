-- A near-cache listener says "I am alive and subscribed": its member's score is the
-- server's clock, so writers and listeners never compare two machines' clocks.
-- Members silent for longer than the window are pruned (the set stays bounded).
-- KEYS: members zset   ARGV: member, window ms
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return now
