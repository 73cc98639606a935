-- wrk script: POST a small JSON event and print the figures the harness reads as one
-- machine-readable line (WRKJSON {...}) from done().
--
-- Optional environment-free configuration through wrk's script args (after `--`):
--   wrk ... -s post.lua URL -- paths=/a,/b,/c   spread requests over these paths
--                                               (random choice per request)
--   wrk ... -s post.lua URL -- event=1          asynchronous invocations
--                                               (X-Scf-Invocation-Type: Event)
--   wrk ... -s post.lua URL -- bodyfile=PATH    send this file as the body instead
--   wrk ... -s post.lua URL -- header=NAME:VALUE
--                                               add a header (repeatable)
-- Optional environment: WRK_ADDRS=127.0.0.1:P1,127.0.0.1:P2 gives the threads their
-- target addresses in turn (thread 1 the first, thread 2 the second, ...), the way
-- SO_REUSEPORT splits connections between per-thread listeners; the URL still names the
-- path and the Host header. Used by `harness.py runtime` (runtime.sh).
wrk.method = "POST"
wrk.body = '{"key1":"value1","key2":"value2","n":42,"source":"wrk"}'
wrk.headers["Content-Type"] = "application/json"

local paths = nil
local addrs = nil
local threads_set = 0

function setup(thread)
  local list = os.getenv("WRK_ADDRS")
  if not list or list == "" then
    return
  end
  if not addrs then
    addrs = {}
    for hp in list:gmatch("[^,]+") do
      local host, port = hp:match("^(.*):(%d+)$")
      addrs[#addrs + 1] = wrk.lookup(host, port)[1]
    end
  end
  thread.addr = addrs[threads_set % #addrs + 1]
  threads_set = threads_set + 1
end

function init(args)
  for _, a in ipairs(args) do
    local k, v = a:match("^(%w+)=(.*)$")
    if k == "paths" then
      paths = {}
      for p in v:gmatch("[^,]+") do
        paths[#paths + 1] = wrk.format(nil, p)
      end
    elseif k == "event" then
      wrk.headers["X-Scf-Invocation-Type"] = "Event"
    elseif k == "bodyfile" then
      local f = assert(io.open(v, "rb"))
      wrk.body = f:read("*a")
      f:close()
    elseif k == "header" then
      local name, value = v:match("^([^:]+):(.*)$")
      wrk.headers[name] = value
    elseif k == "pathfile" then
      paths = {}
      for p in io.lines(v) do
        if p ~= "" then paths[#paths + 1] = wrk.format(nil, p) end
      end
    end
  end
end

function request()
  if paths then
    return paths[math.random(#paths)]
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,' ..
    '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
