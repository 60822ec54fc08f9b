-- Many RLocks tried once each in ONE script call (a worker settling a batch takes one
-- lock per user). Runs after the local function rlock_acquire (lua/rlock_acquire.lua,
-- composed in by cache/scripts.py), so each lock is taken exactly as one alone is.
-- KEYS the lock keys; ARGV two per key, those of rlock_acquire: KEYS[i]'s lease ms at
-- ARGV[2i-1], its owner id at ARGV[2i].
-- Returns one reply per key, in order: nil when acquired, else the busy lock's PTTL in ms.
local replies = {}
for i, key in ipairs(KEYS) do
  local ttl = rlock_acquire({key}, {ARGV[2 * i - 1], ARGV[2 * i]})
  if ttl == nil then
    replies[i] = false
  else
    replies[i] = ttl
  end
end
return replies
