-- A cheap look at one seckill voucher's gate state, for reconciliation (cache/reconcile.py:
-- the beat's Reconciler.run_if_lost, and MISSING mode): whether its stock and window are
-- there, and how many buyers and issued ids it has. The gate, a drift record and the repair
-- add a buyer and their id together and nothing removes either, so the two counts
-- differ only when some of the state was deleted. Atomic, in the voucher's slot.
-- KEYS: 1 seckill:stock:{v}  2 seckill:window:{v}  3 seckill:order:{v}  4 seckill:orderid:{v}
-- Returns {stock present (0/1), window present (0/1), buyers, issued ids}.
return {
  redis.call('exists', KEYS[1]),
  redis.call('exists', KEYS[2]),
  redis.call('scard', KEYS[3]),
  redis.call('hlen', KEYS[4]),
}
