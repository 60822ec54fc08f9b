-- Make a freshly built Bloom filter live atomically: OR in the bits built offline
-- (the scratch key) to the building key that concurrent inserts also wrote, drop the
-- building key's safety TTL, and RENAME it over the live key.
-- KEYS: building key, scratch key, live key
-- Returns 1, or 0 when the building key vanished (its TTL ran out: rebuild again).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('BITOP', 'OR', KEYS[1], KEYS[1], KEYS[2])
  redis.call('DEL', KEYS[2])
end
redis.call('PERSIST', KEYS[1])
redis.call('RENAME', KEYS[1], KEYS[3])
return 1
