-- POST a 64 KiB body to /echo and read it back.
--   wrk -c64 -d10s -s benchmarks/lua/post_echo.lua http://127.0.0.1:8000/echo -- 65536
local size = 65536

init = function(args)
  size = tonumber(args[1]) or size
  wrk.method = "POST"
  wrk.body = string.rep("a", size)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
