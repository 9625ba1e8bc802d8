#!/usr/bin/env bash
# Autobahn|Testsuite, the WebSocket conformance suite that websockets, wsproto,
# uWebSockets and h2o report against, run against the project's three echo endpoints:
#
#   tools/autobahn.sh [ENDPOINT...]     c: examples/hello_server.c (build/test/hello_server)
#                                       native: the native API, @app.websocket callbacks
#                                       asgi: a Starlette app on the ASGI adapter
#                                       native-async: the native API, an async def handler
#                                       (default: c native asgi, all at once)
#   tools/autobahn.sh --url ws://HOST:PORT/PATH NAME   any echo endpoint, e.g. a peer's
#
# The endpoints are tests/autobahn/echo.py (and hello_server for c). Each endpoint's summary
# (tests/autobahn/summary.py) gives the counts per behaviour, cases and seconds per group,
# and what the suite expected and the server did for every case that is not OK. Exits 1 on
# any FAILED or UNIMPLEMENTED case or FAILED close behaviour, on a server that did not start
# or stop cleanly, or with WebSockets still open after its graceful stop; 2 when the suite
# cannot run at all.
#
# Environment:
#   AUTOBAHN_CASES    JSON list of case patterns (default: the cases the test suite runs,
#                     below); AUTOBAHN_EXCLUDE: JSON list of cases left out (default none)
#   AUTOBAHN_PYTHON   a python3 with pymongoose_uring and starlette installed (default
#                     build/venv/bin/python, which tools/test.sh makes)
#   AUTOBAHN_REPORTS  where the reports go (default build/autobahn): NAME/reports/index.html
#   AUTOBAHN_TIMEOUT  seconds one endpoint's run may take (default 900)
#   AUTOBAHN_CACHE    the suite's installation (default ~/.cache/pymongoose_uring/autobahn-KEY)
#
# The suite is Python 2 only (wstest's fuzzing client: autobahntestsuite 25.10.1 on Twisted):
# it needs a CPython 2.7, which pyenv provides on this project's machines
# ($(pyenv root)/versions/2.7.18); the pinned packages below come from PyPI into the cache
# (first run about a minute, then nothing). wsaccel (C UTF-8 validation and masking for the
# client) makes the permessage-deflate groups 3x quicker. Debian 12 has no Python 2, and
# pyenv builds 2.7 from python.org's sources, which machines that reach only PyPI and Debian
# cannot fetch: without a 2.7 this script stops with exit status 2 and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# The test suite's cases: the issue's 1-7, 10, 12 and 13 (9.* is the slow performance group:
# benchmarks). 12.* and 13.* are permessage-deflate: 12 groups (each a different offer:
# context takeover or not, window bits 9 to 15 each way), each of 18 cases that send 1000
# messages of 16 B to 128 KiB, whole or in fragments, one after another through a Python 2
# client: all 216 take 5 to 10 minutes per endpoint on an idle core (40 s of the client's CPU
# per group; the server's is a tenth of that), too long for the suite. So the suite runs every
# group, at the sizes that cover the paths: 16 B (x.y.1), 4 KiB (x.y.5, past our 2^12
# window and the client's smaller ones) and 8 KiB in 256-byte fragments (x.y.11), and for the
# C server 32 KiB too (x.y.8, past every window); the Python endpoints share the engine's
# deflate and add only their message path, which 1-7 and 10 cover.
# AUTOBAHN_CASES='["12.*","13.*"]' runs every deflate case.
suite_cases() { # suite_cases ENDPOINT: the JSON list of the test suite's cases for it
  python3 - "$1" <<'PY'
import json, sys
sizes = [1, 5, 11] + ([8] if sys.argv[1] == "c" else [])
deflate = ["%d.%d.%d" % (g, s, c) for g, n in ((12, 5), (13, 7)) for s in range(1, n + 1)
           for c in sorted(sizes)]
print(json.dumps(["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"] + deflate))
PY
}
reports=${AUTOBAHN_REPORTS:-$root/build/autobahn}
timeout_s=${AUTOBAHN_TIMEOUT:-900}
py3=${AUTOBAHN_PYTHON:-$root/build/venv/bin/python}

url= url_name=
endpoints=()
while [ $# -gt 0 ]; do
  case $1 in
    --url) url=${2:?--url ws://HOST:PORT/PATH NAME}; url_name=${3:?--url URL NAME}; shift 3 ;;
    c | native | native-async | asgi) endpoints+=("$1"); shift ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
[ -n "$url" ] || [ ${#endpoints[@]} -gt 0 ] || endpoints=(c native asgi)

# --- CPython 2.7 and the suite, pinned (the versions that install and run together on 2.7).
pins=(setuptools==44.0.0 txaio==2.1.0 incremental==16.10.1 pyOpenSSL==19.1.0
  cryptography==3.3.2 Twisted==19.10.0 zope.interface==4.6.0 jinja2==2.11.3 markupsafe==1.1.1
  Werkzeug==1.0.1 klein==17.10.0 service_identity==18.1.0 unittest2==1.1.0 six==1.16.0
  "autobahn[twisted]==0.10.9")
suite=autobahntestsuite==25.10.1
accel=wsaccel==0.6.6
py2=
pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for p in "$pyenv_root"/versions/2.7.18/bin/python "$pyenv_root"/versions/2.7*/bin/python \
  "$(command -v python2.7 || true)"; do
  if [ -n "$p" ] && [ -x "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
    py2=$p
    break
  fi
done
if [ -z "$py2" ]; then
  echo "autobahn: FAILED: no CPython 2.7 found (looked in $pyenv_root/versions/2.7* and PATH)." >&2
  echo "autobahn: Autobahn|Testsuite runs on Python 2 only. Install one with 'pyenv install 2.7.18'" >&2
  echo "autobahn: (it builds python.org's source: needs that site; Debian 12 packages no Python 2)." >&2
  exit 2
fi
key=$(printf '%s\n' "$py2" "${pins[@]}" "$suite" "$accel" | sha256sum | cut -c1-12)
cache=${AUTOBAHN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pymongoose_uring/autobahn-$key}
if [ ! -f "$cache/ok" ]; then
  echo "== autobahn: installing $suite on $("$py2" --version 2>&1) into $cache (about a minute)"
  tmp=$(mktemp -d "${cache}.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$cache")" && mktemp -d "${cache}.tmp.XXXXXX"; })
  log=$tmp/install.log
  pip2() { PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONWARNINGS=ignore "$py2" -m pip -q "$@" >>"$log" 2>&1; }
  if ! pip2 download --no-deps -d "$tmp" "$suite" \
    || ! pip2 install --target "$tmp/site" "${pins[@]}" "$tmp"/autobahntestsuite-*; then
    echo "autobahn: FAILED to install the suite from PyPI; the log:" >&2
    grep -v 'is ignored\|DEPRECATION' "$log" | tail -20 >&2
    rm -rf "$tmp"
    exit 2
  fi
  if ! pip2 install --target "$tmp/site" "$accel"; then
    # Only a speed-up: the client validates UTF-8 and masks in pure Python without it.
    echo "autobahn: WARNING: $accel did not build (no Python 2 headers?): the deflate cases run 3x slower" >&2
  fi
  cat >"$tmp/wstest.py" <<'PY'
import site, sys
site.addsitedir(sys.argv.pop(1))  # processes zope's namespace .pth, which --target leaves alone
from autobahntestsuite.wstest import run
sys.argv[0] = 'wstest'
run()
PY
  touch "$tmp/ok"
  rm -rf "$cache"
  mv "$tmp" "$cache" 2>/dev/null || rm -rf "$tmp" # another run installed it meanwhile
fi

# --- One endpoint: start it (port 0), run the suite against it, stop it, check it.
start_server() { # start_server NAME LOG: the server's pid in $server_pid
  case $1 in
    c) "$root/build/test/hello_server" 0 1 >"$2" 2>&1 & ;;
    *) "$py3" "$root/tests/autobahn/echo.py" "$1" >"$2" 2>&1 & ;;
  esac
  server_pid=$!
}

run_endpoint() { # run_endpoint NAME [URL]: writes $reports/NAME/{result,summary.txt}
  local name=$1 target=${2:-} dir=$reports/$1 port= rc=0 t0=$SECONDS
  rm -rf "$dir"
  mkdir -p "$dir"
  local server_log=$dir/server.log
  server_pid=
  if [ -z "$target" ]; then
    start_server "$name" "$server_log"
    for _ in $(seq 300); do # up to 30 s: a loaded machine imports slowly
      port=$(grep -o 'listening on [^ ]*:[0-9]*' "$server_log" 2>/dev/null | grep -o '[0-9]*$' || true)
      [ -n "$port" ] && break
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$port" ]; then
      {
        echo "$name: FAILED: the server did not start; its log:"
        tail -20 "$server_log"
      } >"$dir/summary.txt"
      kill "$server_pid" 2>/dev/null || true
      echo 1 >"$dir/result"
      return
    fi
    target=ws://127.0.0.1:$port/
  fi
  local cases=${AUTOBAHN_CASES:-$(suite_cases "$name")}
  cat >"$dir/fuzzingclient.json" <<JSON
{"outdir": "$dir/reports", "servers": [{"agent": "$name", "url": "$target"}],
 "cases": $cases, "exclude-cases": ${AUTOBAHN_EXCLUDE:-[]}, "exclude-agent-cases": {}}
JSON
  local wstest_rc=0
  (cd "$dir" && timeout "$timeout_s" "$py2" "$cache/wstest.py" "$cache/site" \
    -m fuzzingclient -s fuzzingclient.json >"$dir/wstest.log" 2>&1) || wstest_rc=$?
  {
    if [ $wstest_rc -ne 0 ]; then
      rc=1
      [ $wstest_rc -eq 124 ] && echo "$name: FAILED: the suite ran past ${timeout_s} s"
      echo "$name: FAILED: wstest exited with $wstest_rc; the end of $dir/wstest.log:"
      tail -5 "$dir/wstest.log"
    else
      "$py3" "$root/tests/autobahn/summary.py" "$dir" "$name" || rc=1
    fi
    if [ -n "$server_pid" ]; then
      # A graceful stop: the server must exit 0 with no WebSocket left open.
      if ! kill -TERM "$server_pid" 2>/dev/null; then
        echo "$name: FAILED: the server was gone before the suite ended; the end of its log:"
        tail -20 "$server_log"
        rc=1
      fi
      local stopped=0
      for _ in $(seq 300); do
        kill -0 "$server_pid" 2>/dev/null || { stopped=1; break; }
        sleep 0.1
      done
      if [ $stopped -eq 0 ]; then
        echo "$name: FAILED: the server did not stop within 30 s of SIGTERM"
        kill -KILL "$server_pid" 2>/dev/null || true
        rc=1
      fi
      local server_rc=0
      wait "$server_pid" || server_rc=$?
      if [ $stopped -eq 1 ] && [ $server_rc -ne 0 ]; then
        echo "$name: FAILED: the server exited with status $server_rc; the end of its log:"
        tail -20 "$server_log"
        rc=1
      fi
      "$py3" - "$server_log" "$name" <<'PY' || rc=1
import json, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"^(?:PMU_STATS|stats) (\{.*\})$", text, re.M)
if not m:
    print("%s: FAILED: the server printed no counters when it stopped" % sys.argv[2])
    sys.exit(1)
s = json.loads(m.group(1))
print("  server: %d WebSockets accepted, %d messages in, %d out, closes by class %s, %d open at exit"
      % (s["ws_accepted"], s["ws_messages_in"], s["ws_messages_out"], s["ws_closes"], s["ws_open"]))
if s["ws_open"] != 0 or s["ws_accepted"] == 0:
    print("%s: FAILED: WebSockets open after the graceful stop, or none accepted" % sys.argv[2])
    sys.exit(1)
PY
    fi
    echo "  $((SECONDS - t0)) s; report: $dir/reports/index.html"
  } >"$dir/summary.txt" 2>&1
  echo $rc >"$dir/result"
}

if [ -n "$url" ]; then
  names=("$url_name")
  run_endpoint "$url_name" "$url"
else
  names=("${endpoints[@]}")
  if [[ " ${endpoints[*]} " == *" c "* ]] && [ ! -x build/test/hello_server ]; then
    [ -f build/test/build.ninja ] || meson setup build/test -Dpython=false --buildtype=debugoptimized >/dev/null
    meson compile -C build/test hello_server >/dev/null
  fi
  if [[ " ${endpoints[*]} " == *" native"* || " ${endpoints[*]} " == *" asgi "* ]] \
    && ! (cd / && "$py3" -c 'import pymongoose_uring._pmu, starlette' 2>/dev/null); then
    echo "autobahn: FAILED: $py3 cannot import pymongoose_uring._pmu and starlette" >&2
    echo "autobahn: (pip install --no-build-isolation . and starlette into it, or set AUTOBAHN_PYTHON)" >&2
    exit 2
  fi
  # All at once: each wstest client is one single-threaded process, and so is each server
  # but for its engine thread.
  pids=()
  for name in "${endpoints[@]}"; do
    run_endpoint "$name" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
fi

failed=()
for name in "${names[@]}"; do
  cat "$reports/$name/summary.txt"
  [ "$(cat "$reports/$name/result" 2>/dev/null || echo 1)" = 0 ] || failed+=("$name")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "autobahn: FAILED: ${failed[*]}"
  exit 1
fi
echo "autobahn: ${names[*]}: no FAILED or UNIMPLEMENTED case"
