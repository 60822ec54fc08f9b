-- A wrong password for a phone, counted atomically towards the password lock. Only
-- password login is locked: code login stays open, so a stranger cannot lock the owner
-- out (the owner receives the codes).
-- KEYS[1] login:password:fail:{phone}   KEYS[2] login:password:lock:{phone}
-- ARGV[1] wrong passwords that lock (0 = never lock)   ARGV[2] lock seconds
-- Failures are counted in a window of ARGV[2] seconds from the first one.
-- Returns {status, n}: {"locked", seconds left} | {"wrong", attempts left before the lock,
-- -1 when locking is off}.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'locked', math.max(1, redis.call('TTL', KEYS[2]))}
end
local max_wrong = tonumber(ARGV[1])
local lock_seconds = tonumber(ARGV[2])
if max_wrong <= 0 or lock_seconds <= 0 then return {'wrong', -1} end
local fails = redis.call('INCR', KEYS[1])
if fails == 1 then redis.call('EXPIRE', KEYS[1], lock_seconds) end
if fails >= max_wrong then
  redis.call('SET', KEYS[2], '1', 'EX', lock_seconds)
  redis.call('DEL', KEYS[1])
  return {'locked', lock_seconds}
end
return {'wrong', max_wrong - fails}
