-- 16-deep HTTP/1.1 pipelining for wrk: every write carries DEPTH GET requests.
--   wrk -c64 -d10s -s benchmarks/lua/pipeline.lua http://127.0.0.1:8000/ -- 16
-- wrk counts each response, so Requests/sec counts requests, not batches.
-- Optional second argument: the path (default "/").
local pipelined

init = function(args)
  local depth = tonumber(args[1]) or 16
  local path = args[2] or "/"
  local one = wrk.format("GET", path)
  local parts = {}
  for i = 1, depth do
    parts[i] = one
  end
  pipelined = table.concat(parts)
end

request = function()
  return pipelined
end
