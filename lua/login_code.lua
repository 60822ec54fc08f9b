-- One login attempt for a phone, atomically: the brute-force lock, the code check and
-- the code's consumption (a code logs in once), or the failure count.
-- KEYS[1] login:code:{phone}   KEYS[2] login:fail:{phone}   KEYS[3] login:lock:{phone}
-- ARGV[1] the submitted code, or "" to only record a failed attempt (password login)
-- ARGV[2] wrong attempts that lock the phone (0 = never lock)   ARGV[3] lock seconds
-- Failures are counted in a window of ARGV[3] seconds from the first one.
-- Returns {status, n}: {"locked", seconds left} | {"missing", 0} (no live code; not
-- counted) | {"wrong", attempts left before the lock} | {"ok", 0} (code consumed).
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'locked', math.max(1, redis.call('TTL', KEYS[3]))}
end
if ARGV[1] ~= '' then
  local code = redis.call('GET', KEYS[1])
  if not code then return {'missing', 0} end
  if code == ARGV[1] then
    redis.call('DEL', KEYS[1], KEYS[2])
    return {'ok', 0}
  end
end
local max_wrong = tonumber(ARGV[2])
local lock_seconds = tonumber(ARGV[3])
if max_wrong <= 0 or lock_seconds <= 0 then return {'wrong', -1} end
local fails = redis.call('INCR', KEYS[2])
if fails == 1 then redis.call('EXPIRE', KEYS[2], lock_seconds) end
if fails >= max_wrong then
  -- Locked: the code is burnt too, so a new one is needed after the lock.
  redis.call('SET', KEYS[3], '1', 'EX', lock_seconds)
  redis.call('DEL', KEYS[1], KEYS[2])
  return {'locked', lock_seconds}
end
return {'wrong', max_wrong - fails}
