-- A fence write: a tiny write in a slot whose WAIT proves that every earlier write of
-- that master (the Stream entries a settler read) is on its replicas (cache/replication.py).
-- KEYS: 1 the fence key (of the voucher's tag).  ARGV: 1 ttl (ms).
return redis.call('set', KEYS[1], '1', 'PX', ARGV[1])
