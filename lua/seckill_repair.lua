-- Repair one seckill voucher's gate state after Redis lost some of it (cache/reconcile.py).
-- Atomic against the live keys, so the gate's sales go on around it. Writes only what
-- the truth (database rows + unsettled reservations, computed by the caller) implies:
-- * stock: the caller's base (database stock - buyers with a reservation but no row)
--   minus what the gate sold since the caller's snapshot (S0 - now), plus the sales
--   of that fall the database already counts: the caller's rows whose users were
--   not buyers at the snapshot and now are, with the row's id (read before any
--   write here; a buyer Redis lost is not one now). Never below 0.
--   Mode 'missing' sets it only when the key is absent (and was at the snapshot);
--   'always' also corrects a present one. Absent at the snapshot but present now:
--   someone loaded it meanwhile (its sales are unknown here): left alone.
-- * window: the database's, always (as cache/seckill.load_voucher).
-- * buyers: added, never removed (a buyer too many only refuses, never oversells).
-- * ids: the rows' ids where the hash differs (a row is the truth), the unsettled
--   reservations' ids only where the hash has none.
-- KEYS: 1 seckill:stock:{v}  2 seckill:window:{v}  3 seckill:order:{v}  4 seckill:orderid:{v}
-- ARGV: 1 mode ('always' | 'missing')  2 stock at the snapshot ('' = absent)  3 base
--       4 begin ms  5 end ms  6 k, then k pairs user, row id (rows of users not buyers
--       at the snapshot); then n (buyers to add), then n user ids; then m (row ids),
--       then m pairs user, id; then the rest: pairs user, id to set if absent.
-- Returns {stock before ('' = absent), stock after ('' = absent), buyers added, ids set}.
local newer = 0
local k = tonumber(ARGV[6])
for j = 7, 6 + 2 * k, 2 do
  if redis.call('sismember', KEYS[3], ARGV[j]) == 1
      and redis.call('hget', KEYS[4], ARGV[j]) == ARGV[j + 1] then
    newer = newer + 1
  end
end

local now = redis.call('get', KEYS[1])
local before = now or ''
local after = before
local base = math.max(tonumber(ARGV[3]), 0)
if not now then
  if ARGV[2] == '' then
    redis.call('set', KEYS[1], base)
    after = tostring(base)
  end
elseif ARGV[1] == 'always' and ARGV[2] ~= '' then
  local target = math.max(base - (tonumber(ARGV[2]) - tonumber(now)) + newer, 0)
  if target ~= tonumber(now) then
    redis.call('set', KEYS[1], target)
  end
  after = tostring(target)
end
redis.call('hset', KEYS[2], 'begin', ARGV[4], 'end', ARGV[5])

local added, fixed = 0, 0
local first = 8 + 2 * k  -- the first buyer to add
local n = tonumber(ARGV[first - 1])
local i = first
while i < first + n do  -- in chunks: unpack has a stack limit
  local last = math.min(i + 999, first - 1 + n)
  added = added + redis.call('sadd', KEYS[3], unpack(ARGV, i, last))
  i = last + 1
end
local m = tonumber(ARGV[i])
i = i + 1
for j = i, i + 2 * m - 1, 2 do
  if redis.call('hget', KEYS[4], ARGV[j]) ~= ARGV[j + 1] then
    redis.call('hset', KEYS[4], ARGV[j], ARGV[j + 1])
    fixed = fixed + 1
  end
end
for j = i + 2 * m, #ARGV, 2 do
  fixed = fixed + redis.call('hsetnx', KEYS[4], ARGV[j], ARGV[j + 1])
end
return {before, after, added, fixed}
