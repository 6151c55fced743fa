-- wrk script for bench/http.py. With a file argument (`wrk ... -s wrk_load.lua URL -- FILE`),
-- POST /route with the JSON bodies of FILE (one per line) in turn; without one, GET the URL.
-- When the run ends, print one JSON line with the totals and latency percentiles (µs).
local bodies = {}
local count = 0
local next_index = 0

function init(args)
  local path = args[1]
  if path ~= nil then
    for line in io.lines(path) do
      count = count + 1
      bodies[count] = wrk.format("POST", "/route", {["Content-Type"] = "application/json"}, line)
    end
  end
end

function request()
  if count == 0 then
    return wrk.request()
  end
  next_index = next_index % count + 1
  return bodies[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, ' ..
    '"max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
