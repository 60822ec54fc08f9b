-- Token bucket over one or more keys, checked and charged together (all or nothing).
-- Each KEYS[i] is a hash {tokens, ts}: the tokens left at time ts (ms). A bucket holds at
-- most `capacity` tokens (the burst) and regains `rate` tokens per second (the sustained
-- rate); a missing key is a full bucket, and the key expires once it would be full again.
-- ARGV[1]: now in ms, or "" to use Redis TIME (one clock for every process).
-- ARGV[2]: tokens this request costs.
-- ARGV[1+2i], ARGV[2+2i]: capacity and rate (tokens/s) of KEYS[i].
-- Returns, per key: allowed (1/0), tokens left (floor), ms until full, ms until allowed.
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local cost = tonumber(ARGV[2])
local EPS = 1e-9
local MAX_MS = 2 ^ 52 -- keep replies and TTLs in integer range whatever the rule
local tokens, stamps, caps, rates = {}, {}, {}, {}
local all_allowed = true
for i = 1, #KEYS do
  local cap = tonumber(ARGV[1 + 2 * i])
  local rate = tonumber(ARGV[2 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local left = tonumber(state[1])
  local ts = tonumber(state[2])
  if left == nil or ts == nil then
    left, ts = cap, now
  elseif now > ts then
    -- A clock behind the stored one (caller-supplied now) credits nothing.
    left = left + (now - ts) * rate / 1000
    ts = now
  end
  left = math.min(cap, left) -- also when the capacity was lowered since
  tokens[i], stamps[i], caps[i], rates[i] = left, ts, cap, rate
  if left + EPS < cost then all_allowed = false end
end
local out = {}
for i = 1, #KEYS do
  local left = tokens[i]
  if all_allowed then left = math.max(0, left - cost) end
  local to_full = math.min(MAX_MS, math.ceil((caps[i] - left) * 1000 / rates[i]))
  if all_allowed then
    redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', left),
      'ts', string.format('%.17g', stamps[i]))
    redis.call('PEXPIRE', KEYS[i], math.max(1, to_full))
  end
  local wait = 0
  if left + EPS < cost then
    wait = math.min(MAX_MS, math.ceil((cost - left) * 1000 / rates[i]))
  end
  local allowed = 0
  if all_allowed then allowed = 1 end
  out[#out + 1] = allowed
  out[#out + 1] = math.floor(left + EPS)
  out[#out + 1] = to_full
  out[#out + 1] = wait
end
return out
