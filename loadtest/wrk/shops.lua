-- GET /shop/{id} with the locust cache scenarios' mix (loadtest/locustfile.py, CacheUser):
-- HOT_SHARE of the requests go to a random id of the hot set, the rest to an id uniform over
-- 1..COLD_SPAN, a little above the shop count, so a few % of those ids do not exist.
-- Usage: wrk -t T -c C -d D -s shops.lua URL -- HOT_IDS_FILE SHOP_COUNT COLD_SPAN HOT_SHARE
--   HOT_IDS_FILE: one shop id per line.
-- Answers are counted by status: 200 (a shop), 404 (an id above SHOP_COUNT: the expected
-- answer for an unknown shop), anything else; done() prints them as one
-- "HMDP ok=.. missing=.. other=.. unknown_sent=.." line (unknown_sent: requests for ids above
-- SHOP_COUNT, so the runner can check that every 404 was one of them) and "HMDP p95_us=..".
local threads = {}
local next_id = 0
local hot, n_hot = {}, 0
local shop_count, cold_span, hot_share = 0, 0, 0.8
ok, missing, other, unknown_sent = 0, 0, 0, 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then
      n_hot = n_hot + 1
      hot[n_hot] = line
    end
  end
  shop_count = tonumber(args[2])
  cold_span = tonumber(args[3])
  hot_share = tonumber(args[4])
  math.randomseed(os.time() * 1000 + (thread_id or 0))
end

function request()
  local id
  if math.random() < hot_share then
    id = hot[math.random(n_hot)]
  else
    local cold = math.random(cold_span)
    if cold > shop_count then
      unknown_sent = unknown_sent + 1
    end
    id = tostring(cold)
  end
  return wrk.format("GET", "/shop/" .. id)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 404 then
    missing = missing + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local o, m, x, u = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    o = o + thread:get("ok")
    m = m + thread:get("missing")
    x = x + thread:get("other")
    u = u + thread:get("unknown_sent")
  end
  io.write(string.format("HMDP ok=%d missing=%d other=%d unknown_sent=%d\n", o, m, x, u))
  io.write(string.format("HMDP p95_us=%d\n", latency:percentile(95.0)))
end
