-- POST /voucher-order/seckill/{id}, every request as a different logged-in user.
-- Usage: wrk -t T -c C -d D -s seckill.lua URL -- TOKENS_FILE VOUCHER_IDS T
--   TOKENS_FILE: one session token per line (user k's token on line k+1);
--   VOUCHER_IDS: comma-separated seckill voucher ids; T: the wrk thread count.
-- Request n of thread t uses pair k = t + n*T: user k mod N, voucher floor(k/N) mod V,
-- so together the threads walk every (user, voucher) pair once before repeating
-- (a repeat is a duplicate the gate refuses). Responses are counted by status and
-- printed by done() as one "HMDP ok=.. refused=.. other=.." line for the runner.
local threads = {}
local next_id = 0
local tokens, vouchers = {}, {}
local n_tokens, n_vouchers, n_threads = 0, 0, 1
local sent = 0
ok, refused, other = 0, 0, 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then
      n_tokens = n_tokens + 1
      tokens[n_tokens] = line
    end
  end
  for id in string.gmatch(args[2], "%d+") do
    n_vouchers = n_vouchers + 1
    vouchers[n_vouchers] = id
  end
  n_threads = tonumber(args[3])
end

function request()
  local k = (thread_id or 0) + sent * n_threads
  sent = sent + 1
  local token = tokens[(k % n_tokens) + 1]
  local voucher = vouchers[(math.floor(k / n_tokens) % n_vouchers) + 1]
  return wrk.format("POST", "/voucher-order/seckill/" .. voucher, { ["authorization"] = token }, "")
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 409 then
    refused = refused + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local o, r, x = 0, 0, 0
  for _, thread in ipairs(threads) do
    o = o + thread:get("ok")
    r = r + thread:get("refused")
    x = x + thread:get("other")
  end
  io.write(string.format("HMDP ok=%d refused=%d other=%d\n", o, r, x))
  io.write(string.format("HMDP p95_us=%d\n", latency:percentile(95.0)))
end
