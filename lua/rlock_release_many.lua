-- Many RLocks released once each in ONE script call. Runs after the local function
-- rlock_release (lua/rlock_release.lua, composed in by cache/scripts.py).
-- KEYS the lock keys; ARGV two per key, those of rlock_release: KEYS[i]'s owner id at
-- ARGV[2i-1], its unlock channel at ARGV[2i].
-- Returns one reply per key, in order: the holds left (0 = released), -1 if not ours.
local replies = {}
for i, key in ipairs(KEYS) do
  replies[i] = rlock_release({key}, {ARGV[2 * i - 1], ARGV[2 * i]})
end
return replies
