-- The seckill gate behind the caller's token bucket, in ONE call: charge the bucket
-- (lua/token_bucket.lua, one key) and, only if it admits the request, run the gate
-- (lua/seckill.lua). What the web's rate-limit hook and the gate do in two calls,
-- for the WSGI fast path of the order route when its per-user limit is a token bucket.
-- Composed by cache/scripts.py load_composed: token_bucket(KEYS, ARGV) and
-- seckill(KEYS, ARGV) are those two files, each as a function.
-- KEYS: 1 the bucket, 2.. the gate's KEYS.  ARGV: 1..4 the bucket's ARGV (now or "",
-- cost, capacity, rate), 5.. the gate's ARGV.
-- Returns the bucket's four numbers (allowed, tokens left, ms until full, ms until
-- allowed), then, when allowed, the gate's reply.
local bucket = token_bucket({KEYS[1]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4]})
if bucket[1] == 0 then
  return bucket
end
local gate_keys, gate_args = {}, {}
for i = 2, #KEYS do
  gate_keys[#gate_keys + 1] = KEYS[i]
end
for i = 5, #ARGV do
  gate_args[#gate_args + 1] = ARGV[i]
end
local gate = seckill(gate_keys, gate_args)
for i = 1, #gate do
  bucket[#bucket + 1] = gate[i]
end
return bucket
