-- RLock watchdog renewal: reset the lease only while ARGV[2] still holds the
-- lock (if it expired or was force-released, the watchdog must stop).
-- KEYS[1] lock key; ARGV[1] lease ms; ARGV[2] owner id.
-- Returns 1 if renewed, 0 if the owner no longer holds it.
if redis.call('hexists', KEYS[1], ARGV[2]) == 1 then
  redis.call('pexpire', KEYS[1], ARGV[1])
  return 1
end
return 0
