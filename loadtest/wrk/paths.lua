-- GET a random path from a list on every request (shop-peak, bench_shop, empty route).
-- Usage: wrk -t T -c C -d D -s paths.lua URL -- PATHS_FILE
-- PATHS_FILE has one path per line ("/shop/17"); each wrk thread reads it once
-- in init() and seeds its own random generator, so threads do not march in step.
-- done() prints "HMDP p95_us=.." (wrk itself reports 50/75/90/99 only).
local paths = {}
local count = 0
local next_id = 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then
      count = count + 1
      paths[count] = line
    end
  end
  math.randomseed(os.time() * 1000 + (thread_id or 0))
end

function request()
  return wrk.format("GET", paths[math.random(count)])
end

function done(summary, latency, requests)
  -- wrk's report has no 95th percentile; the runner reads this line.
  io.write(string.format("HMDP p95_us=%d\n", latency:percentile(95.0)))
end
