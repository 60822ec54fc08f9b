-- Toggle one user's like on a blog atomically, so concurrent toggles never both
-- "add" (or both "remove"): the answer decides the +1/-1 applied to tb_blog.liked.
-- KEYS[1] = blog:liked:{blogId} (zset: liker id -> like time in ms)
-- ARGV[1] = user id; ARGV[2] = like time in ms (score if this toggle adds)
-- Returns {1, score} when the user now likes the blog, {-1, old score} when the like
-- was removed (the old score lets the caller undo exactly if the database write fails).
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if old then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {-1, old}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return {1, ARGV[2]}
