-- Seckill gate: decide one flash-sale order atomically, in one round trip.
-- Checks in order: voucher loaded, sale window, one order per user, stock.
-- On success: makes the order id (the layout of cache/ids.py: the second, the voucher's
-- hash slot, then this second's count of the slot's counter, in the slot too),
-- appends the reservation {orderId, userId, voucherId} to the orders stream,
-- then decrements the stock and records the buyer and the id issued to them (writes
-- after the XADD, so a failing XADD leaves no half reservation). A buyer refused as
-- already ordered is told that id (so a retried order learns it; '' if Redis has
-- lost it: the caller may look for the row).
-- The buyer is ARGV[1], or, when ARGV[1] is '', the user of the login session at
-- KEYS[7] (the web fast path on a single Redis: session lookup and gate in ONE round
-- trip; a cluster reads the session in a call of its own, another slot), read by
-- lua/session_user.lua (composed before this script: cache/scripts.py load_composed).
-- KEYS: 1 seckill:stock:{v}  2 seckill:window:{v} (hash begin/end, epoch ms)
--       3 seckill:order:{v} (set of user ids)  4 stream.orders
--       5 icr:order:{<slot tag>}:<epoch second> (the slot's counter for this second)
--       6 seckill:orderid:{v} (hash user id -> the order id issued to them)
--       7 login:token:{token} (only with ARGV[1] = '')
-- ARGV: 1 userId or ''  2 voucherId  3 now (epoch ms)
--       4, 5 id base ((now - 2022-01-01) << 32 | slot << 18) split at 10^10: high, low
--       (Lua numbers are doubles, exact only to 2^53)  6 id counter ttl (s)
--       7 the largest count of one second (2^18 - 1)
--       8 session ttl (s) (only with ARGV[1] = '')
-- Returns {code, userId}, {2, userId, orderId or ''} (already ordered), or
-- {0, userId, orderId (decimal string), streamId}.
-- Codes: 0 ok, 1 sold out, 2 already ordered, 3 not started, 4 ended,
--        5 unknown (not loaded), 6 id counter exhausted (this second, this slot),
--        7 no session (no such token, or no id in it), 8 a session id that is not a
--        plain positive decimal (the caller lets the full auth code judge it).
local user = ARGV[1]
if user == '' then
  local session = session_user({KEYS[7]}, {ARGV[8]})
  if session[1] ~= 0 then
    return session
  end
  user = session[2]
end
local stock = tonumber(redis.call('get', KEYS[1]))
if stock == nil then
  return {5, user}
end
local window = redis.call('hmget', KEYS[2], 'begin', 'end')
local begin_ms, end_ms = tonumber(window[1]), tonumber(window[2])
if begin_ms == nil or end_ms == nil then
  return {5, user}
end
local now = tonumber(ARGV[3])
if now < begin_ms then
  return {3, user}
end
if now >= end_ms then
  return {4, user}
end
if redis.call('sismember', KEYS[3], user) == 1 then
  return {2, user, redis.call('hget', KEYS[6], user) or ''}
end
if stock <= 0 then
  return {1, user}
end
local count = redis.call('incr', KEYS[5])
if count == 1 then
  redis.call('expire', KEYS[5], ARGV[6])
end
if count > tonumber(ARGV[7]) then
  return {6, user}
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
  'orderId', order_id, 'userId', user, 'voucherId', ARGV[2])
redis.call('decr', KEYS[1])
redis.call('sadd', KEYS[3], user)
redis.call('hset', KEYS[6], user, order_id)
return {0, user, order_id, stream_id}
