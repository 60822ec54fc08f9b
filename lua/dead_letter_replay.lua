-- Replay one dead letter: move it back to the orders Stream, at most once.
-- KEYS[1] dead-letter stream; KEYS[2] orders stream; ARGV[1] the dead letter's
-- id; ARGV[2..] the reservation's fields as name, value pairs, or nothing to
-- only remove it (its order is a row already).
-- The XDEL decides: only the caller that removed the dead letter adds it back,
-- and both happen or neither, so an entry is never in both streams nor in none.
-- Returns the new Stream id ('' when only removed), or false if ARGV[1] is no
-- dead letter (any more).
if redis.call('xdel', KEYS[1], ARGV[1]) == 0 then
  return false
end
if #ARGV == 1 then
  return ''
end
return redis.call('xadd', KEYS[2], '*', unpack(ARGV, 2))
