-- Settle entries of one orders stream: acknowledge and delete them together.
-- KEYS[1] the stream; ARGV[1] its consumer group; ARGV[2..] the entry ids.
-- XACK drops them from the group's pending list (if a settler held them; a
-- missing group is no error here: the XDEL still runs), XDEL from the stream,
-- so an entry is in the stream exactly while it is unsettled.
-- Returns how many entries were deleted.
redis.pcall('xack', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('xdel', KEYS[1], unpack(ARGV, 2))
