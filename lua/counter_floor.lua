-- Raise a counter to at least a floor (never lower it), keeping its TTL policy:
-- reconciliation (cache/reconcile.py) makes an order id counter
-- icr:order:{<slot tag>}:<second> at least the highest count it already issued, so INCR
-- never repeats an id after Redis lost the counter or came back with an older one. INCRs
-- meanwhile only move it up, so a floor read earlier is still safe to apply.
-- KEYS: 1 the counter.  ARGV: 1 floor  2 ttl (s) when it is set here.
-- Returns the value it had (0 if absent) when raised, else -1.
local current = tonumber(redis.call('get', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if current >= floor then
  return -1
end
redis.call('set', KEYS[1], floor, 'EX', ARGV[2])
return current
