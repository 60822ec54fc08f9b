-- Exact sliding window (a log of request times) over one or more keys, all or nothing.
-- Each KEYS[i] is a sorted set of the requests admitted in the last `window` ms (score =
-- time in ms); a request is admitted only if every key has fewer than `limit` entries in
-- (now - window, now], and is then logged in each. The key expires with its newest entry.
-- ARGV[1]: now in ms, or "" to use Redis TIME (one clock for every process).
-- ARGV[2]: a caller-chosen nonce that makes this request's member unique.
-- ARGV[1+2i], ARGV[2+2i]: limit and window (ms) of KEYS[i].
-- Returns, per key: allowed (1/0), requests left, ms until empty, ms until allowed.
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local member = string.format('%.3f', now) .. '-' .. ARGV[2]
local counts, limits, windows = {}, {}, {}
local all_allowed = true
for i = 1, #KEYS do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.3f', now - window))
  counts[i], limits[i], windows[i] = redis.call('ZCARD', KEYS[i]), limit, window
  if counts[i] >= limit then all_allowed = false end
end
local out = {}
for i = 1, #KEYS do
  local count, limit, window = counts[i], limits[i], windows[i]
  if all_allowed then
    redis.call('ZADD', KEYS[i], string.format('%.3f', now), member)
    redis.call('PEXPIRE', KEYS[i], math.max(1, math.ceil(window)))
    count = count + 1
  end
  local until_empty = 0
  if count > 0 then
    local newest = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
    until_empty = math.max(0, math.ceil(tonumber(newest[2]) + window - now))
  end
  local wait = 0
  if count >= limit then
    -- A slot frees when the entry that puts the count at the limit leaves the window.
    local idx = count - limit
    local entry = redis.call('ZRANGE', KEYS[i], idx, idx, 'WITHSCORES')
    wait = math.max(1, math.ceil(tonumber(entry[2]) + window - now))
  end
  local allowed = 0
  if all_allowed then allowed = 1 end
  out[#out + 1] = allowed
  out[#out + 1] = math.max(0, limit - count)
  out[#out + 1] = until_empty
  out[#out + 1] = wait
end
return out
