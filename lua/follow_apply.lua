-- Mirror one committed follow/unfollow into a user's follow set, if the set exists.
-- A missing set is left missing: it is rebuilt whole from the database on the next
-- read, and creating it here would hold only this one member (an incomplete copy).
-- KEYS[1] = follows:{userId}; ARGV[1] = followed user id; ARGV[2] = "1" follow, "0" unfollow
-- Returns 1 when the set exists (and now matches), 0 when it is missing.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[1], ARGV[1])
else
  redis.call('SREM', KEYS[1], ARGV[1])
end
return 1
