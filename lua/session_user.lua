-- The user of a login session, read as the web's auth hook reads it: the session's TTL
-- pushed back first (sliding session; EXPIRE on a missing key creates nothing), then
-- its 'id'. A part of the seckill gate's scripts (cache/scripts.py load_composed).
-- KEYS: 1 login:token:{token}.  ARGV: 1 the session ttl (s).
-- Returns {0, userId}; {7, ''}: no such token, or no id in it; {8, ''}: an id that is not
-- a plain positive decimal (the caller lets its full auth code judge it).
if redis.call('expire', KEYS[1], ARGV[1]) == 0 then
  return {7, ''}
end
local user = redis.call('hget', KEYS[1], 'id')
if not user then
  return {7, ''}
end
if not string.match(user, '^[1-9]%d*$') then
  return {8, ''}
end
return {0, user}
