-- wrk script: requests spread over OBJECTS distinct object names.
-- Usage: wrk -s scripts/wrk-spread.lua URL -- <class> <path> <objects>
local class, path, objects = "counter", "increment", 10000
local fixed = false
function init(args)
  if args[1] == "fixed" then fixed = true end
  class = args[1] or class
  path = args[2] or path
  objects = tonumber(args[3] or objects)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
function request()
  if fixed then return wrk.format("GET", wrk.path) end
  local name = math.random(0, objects - 1)
  return wrk.format("GET", "/objects/" .. class .. "/k" .. name .. "/" .. path)
end
function done(summary, latency, requests)
  io.write(string.format("STEADSUMMARY rps=%.0f p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
