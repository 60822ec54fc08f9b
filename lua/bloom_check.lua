-- Bloom filter membership in one call: 1 = maybe present, 0 = surely absent,
-- -1 = the filter does not exist (not built yet; callers let the id through).
-- KEYS: bloom key   ARGV: the id's bit offsets
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
for i = 1, #ARGV do
  if redis.call('GETBIT', KEYS[1], ARGV[i]) == 0 then return 0 end
end
return 1
