-- Read one cached entity in ONE round trip (the hot path of GET /shop/{id}).
-- The logical (hot) key is tried first, then the physical key; only on a miss is
-- the Bloom filter consulted, so a hit costs no GETBIT. A missing Bloom key means
-- "not built yet": everything passes (fail open), nothing is ever rejected by it.
-- KEYS: logical key, physical key, bloom key, version key
-- ARGV: bit offsets of the id in the Bloom filter (none: no Bloom check)
-- Returns {kind, value}: 'L' logical envelope, 'P' physical value ('' = null marker),
-- 'R' rejected by the Bloom filter, 'M' miss with value = the key's version ('' = none),
-- which the rebuilder hands back to cache_cas_set.lua.
local v = redis.call('GET', KEYS[1])
if v then return {'L', v} end
v = redis.call('GET', KEYS[2])
if v then return {'P', v} end
if #ARGV > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  for i = 1, #ARGV do
    if redis.call('GETBIT', KEYS[3], ARGV[i]) == 0 then return {'R', ''} end
  end
end
return {'M', redis.call('GET', KEYS[4]) or ''}
