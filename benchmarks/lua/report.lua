-- Appended by the runner to every workload's script: one machine-readable summary line.
-- Latencies are in microseconds.
--
-- wrk 4.1 "corrects" its latency histogram for coordinated omission after the run, adding
-- synthetic samples at (latency - k * interval). When those land below the smallest
-- recorded latency (deep pipelining does this: the interval is tiny), its percentile()
-- scans from the old minimum, never reaches the rank, and answers 0 (or too high a value).
-- So percentiles here are taken over the samples percentile() can see: bisect for the
-- highest percentile it still answers (the visible fraction), then rescale.
local function visible_fraction(latency)
  if latency:percentile(99.9999) ~= 0 then
    return 1.0
  end
  local lo, hi = 0.0, 99.9999
  for _ = 1, 40 do
    local mid = (lo + hi) / 2
    if latency:percentile(mid) ~= 0 then lo = mid else hi = mid end
  end
  return lo / 100
end

done = function(summary, latency, requests)
  local e = summary.errors
  local f = visible_fraction(latency)
  local function pct(p) return latency:percentile(p * f) end
  io.write(string.format(
    "BENCH_RESULT {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"errors\":{\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}," ..
    "\"latency_us\":{\"mean\":%.1f,\"stdev\":%.1f,\"p50\":%d,\"p90\":%d,\"p99\":%d,\"max\":%d," ..
    "\"visible_fraction\":%.4f}}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, pct(50), pct(90), pct(99), latency.max, f))
end
