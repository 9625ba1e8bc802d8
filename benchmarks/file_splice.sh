#!/usr/bin/env bash
# file_splice.sh: the engine's two ways of sending a file piece, side by side, per size:
# read (pread into memory, then send; file_splice_min = SIZE_MAX) and splice (file -> pipe
# -> socket through io_uring; file_splice_min = 0). Serves one file with
# `hello_server --file PATH` (GET /file), keep-alive, pinned to one core (taskset), with wrk
# pinned to another; prints requests/s and the server's CPU microseconds per request
# (utime + stime from /proc/PID/stat over the run), for 1 connection and for many.
# The default of file_splice_min (include/pmu/pmu.h) is set from what this prints.
#
#   benchmarks/file_splice.sh [BUILD_DIR] [SECONDS]     (defaults: build/test, 3)
#   SIZES="4096 65536" CONNS="1 64" SERVER_CPU=0 CLIENT_CPU=1 benchmarks/file_splice.sh
#
# Loopback only (127.0.0.1); each run is bounded by SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/test}
secs=${2:-3}
server=$build/hello_server
sizes=${SIZES:-"4096 16384 65536 262144 1048576 4194304"}
conns=${CONNS:-"1 64"}
scpu=${SERVER_CPU:-0}
ccpu=${CLIENT_CPU:-1}
[ -x "$server" ] || { echo "no $server: build it (meson compile -C $build)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is needed" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/file_splice.XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
tck=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

printf "%-9s %-6s %5s %12s %12s %10s\n" size way conns "req/s" "MiB/s" "cpu_us/req"
for size in $sizes; do
  head -c "$size" /dev/urandom >"$tmp/f"
  for way in read splice; do
    if [ "$way" = read ]; then min=18446744073709551615; else min=0; fi
    # Port 0: a free one, read back from the server's "listening on" line.
    PMU_FILE_SPLICE_MIN=$min taskset -c "$scpu" "$server" --file "$tmp/f" 0 1 \
      2>"$tmp/server.err" &
    pid=$!
    port=
    for _ in $(seq 100); do
      port=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\) .*/\1/p' "$tmp/server.err")
      [ -n "$port" ] && break
      sleep 0.05
    done
    [ -n "$port" ] || { echo "the server did not start: $(cat "$tmp/server.err")" >&2; exit 1; }
    # The bytes are right before anything is timed.
    curl -s "http://127.0.0.1:$port/file" -o "$tmp/got"
    cmp -s "$tmp/got" "$tmp/f" || {
      echo "wrong bytes for $size by $way: $(cmp "$tmp/got" "$tmp/f" 2>&1)" >&2
      exit 1
    }
    for c in $conns; do
      t0=$(cpu_ticks "$pid")
      out=$(taskset -c "$ccpu" wrk -t1 -c"$c" -d"${secs}s" "http://127.0.0.1:$port/file" 2>&1)
      t1=$(cpu_ticks "$pid")
      reqs=$(awk '/requests in/ {print $1}' <<<"$out")
      if [ -z "$reqs" ] || [ "$reqs" -eq 0 ]; then
        echo "wrk failed: $out" >&2
        exit 1
      fi
      awk -v s="$size" -v w="$way" -v c="$c" -v r="$reqs" -v t=$((t1 - t0)) -v hz="$tck" \
        -v d="$secs" 'BEGIN { printf "%-9s %-6s %5d %12.0f %12.1f %10.1f\n", s, w, c, r / d,
          r * s / d / 1048576, t * 1e6 / hz / r }'
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
  done
done
