-- Seckill gate: decide one flash-sale order atomically, in one round trip.
-- Checks in order: voucher loaded, sale window, one order per user, stock.
-- On success: makes the order id (same key and layout as cache/ids.py),
-- appends the reservation {orderId, userId, voucherId} to the orders stream,
-- then decrements the stock and records the buyer (writes after the XADD, so a
-- failing XADD leaves no half reservation).
-- KEYS: 1 seckill:stock:{v}  2 seckill:window:{v} (hash begin/end, epoch ms)
--       3 seckill:order:{v} (set of user ids)  4 stream.orders  5 icr:order:{yyyy:MM:dd}
-- ARGV: 1 userId  2 voucherId  3 now (epoch ms)
--       4, 5 id base ((now - 2022-01-01) << 32) split at 10^10: high, low
--       (Lua numbers are doubles, exact only to 2^53)  6 id key ttl (s)
-- Returns {code} or {0, orderId (decimal string), streamId}.
-- Codes: 0 ok, 1 sold out, 2 already ordered, 3 not started, 4 ended,
--        5 unknown (not loaded), 6 id counter exhausted.
local stock = tonumber(redis.call('get', KEYS[1]))
if stock == nil then
  return {5}
end
local window = redis.call('hmget', KEYS[2], 'begin', 'end')
local begin_ms, end_ms = tonumber(window[1]), tonumber(window[2])
if begin_ms == nil or end_ms == nil then
  return {5}
end
local now = tonumber(ARGV[3])
if now < begin_ms then
  return {3}
end
if now >= end_ms then
  return {4}
end
if redis.call('sismember', KEYS[3], ARGV[1]) == 1 then
  return {2}
end
if stock <= 0 then
  return {1}
end
local count = redis.call('incr', KEYS[5])
if count == 1 then
  redis.call('expire', KEYS[5], ARGV[6])
end
if count > 4294967295 then
  return {6}
end
local high = tonumber(ARGV[4])
local low = tonumber(ARGV[5]) + count
if low >= 1e10 then
  high = high + 1
  low = low - 1e10
end
local order_id
if high > 0 then
  order_id = string.format('%.0f', high) .. string.format('%010.0f', low)
else
  order_id = string.format('%.0f', low)
end
local stream_id = redis.call('xadd', KEYS[4], '*',
  'orderId', order_id, 'userId', ARGV[1], 'voucherId', ARGV[2])
redis.call('decr', KEYS[1])
redis.call('sadd', KEYS[3], ARGV[1])
return {0, order_id, stream_id}
