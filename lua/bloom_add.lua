-- Add an id to the live Bloom filter and, while a rebuild runs, to the one being
-- built too, so an insert racing the rebuild's database scan is not lost at RENAME.
-- A filter that does not exist is not created here: a filter holding only new ids
-- would reject every older one (the rebuild creates it whole).
-- KEYS: live key, building key   ARGV: the id's bit offsets
for k = 1, 2 do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    for i = 1, #ARGV do redis.call('SETBIT', KEYS[k], ARGV[i], 1) end
  end
end
return 1
