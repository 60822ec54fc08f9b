-- The seckill gate for a login session behind its user's token bucket, in ONE call:
-- read the session (lua/session_user.lua), charge the user's bucket
-- (lua/token_bucket.lua, one key) and, only if it admits the request, run the gate
-- (lua/seckill.lua) for that user. What the web's auth hook, rate-limit hook and the
-- gate do in three calls, for the WSGI fast path of the order route when its per-user
-- limit is a token bucket. Composed by cache/scripts.py load_composed: session_user,
-- token_bucket and seckill(KEYS, ARGV) are those files, each as a function.
-- The bucket's key is ARGV[2] .. the session's user id (cache/ratelimit.py limit_key's
-- name for that user): it cannot be known before the session is read, so it is not in
-- KEYS, and the session and the gate's keys do not share a slot either: this runs on a
-- single Redis only; on a Redis Cluster cache/seckill.py makes the three calls instead.
-- KEYS: 1 login:token:{token}, 2.. the gate's KEYS (1..6).
-- ARGV: 1 the session ttl (s), 2 the bucket key without the user id, 3..6 the bucket's
-- ARGV (now or "", cost, capacity, rate), 7.. the gate's ARGV from its second (its
-- first, the user, is the session's).
-- Returns session_user's {7, ''} or {8, ''} (nothing charged, nothing reserved), else
-- {0, userId}, the bucket's four numbers (allowed, tokens left, ms until full, ms until
-- allowed) and, when allowed, the gate's reply.
local session = session_user({KEYS[1]}, {ARGV[1]})
if session[1] ~= 0 then
  return session
end
local user = session[2]
local bucket = token_bucket({ARGV[2] .. user}, {ARGV[3], ARGV[4], ARGV[5], ARGV[6]})
local reply = {0, user, bucket[1], bucket[2], bucket[3], bucket[4]}
if bucket[1] == 0 then
  return reply
end
local gate_keys, gate_args = {}, {user}
for i = 2, #KEYS do
  gate_keys[#gate_keys + 1] = KEYS[i]
end
for i = 7, #ARGV do
  gate_args[#gate_args + 1] = ARGV[i]
end
local gate = seckill(gate_keys, gate_args)
for i = 1, #gate do
  reply[#reply + 1] = gate[i]
end
return reply
