-- Delete a stream only if it holds no entry (the drained legacy orders stream).
-- KEYS[1] the stream. Atomic: an entry added meanwhile keeps the stream.
-- Returns 1 if deleted, 0 if it has entries or does not exist.
if redis.call('exists', KEYS[1]) == 1 and redis.call('xlen', KEYS[1]) == 0 then
  return redis.call('del', KEYS[1])
end
return 0
