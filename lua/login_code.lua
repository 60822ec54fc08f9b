-- One code login attempt for a phone, atomically: the check, the consumption of a right
-- code (a code logs in once), and the count of wrong guesses at THIS code, which void it
-- after ARGV[2] of them. The phone is never locked: the owner requests a new code.
-- KEYS[1] login:code:{phone}   KEYS[2] login:wrong:{phone} (wrong guesses at that code)
-- ARGV[1] the submitted code   ARGV[2] wrong guesses that void the code (at least 1)
-- Returns {status, n}: {"missing", 0} (no live code; not counted) | {"ok", 0} (consumed) |
-- {"wrong", guesses left at this code} | {"void", 0} (that was the last: the code is gone).
local code = redis.call('GET', KEYS[1])
if not code then return {'missing', 0} end
if code == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {'ok', 0}
end
local wrong = redis.call('INCR', KEYS[2])
if wrong == 1 then
  -- The count lives no longer than its code (and a new code deletes it: store_code).
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
local max_wrong = tonumber(ARGV[2])
if wrong >= max_wrong then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {'void', 0}
end
return {'wrong', max_wrong - wrong}
