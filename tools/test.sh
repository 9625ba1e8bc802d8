#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Debian
# packages with apt-get, Python packages with pip into build/venv), builds,
# checks lint and format (ruff, clang-format), runs the C tests, runs them again
# under ASan+UBSan, fuzzes for a bounded time (clang, tests/fuzz), then the Python tests
# under each CPython found and Autobahn|Testsuite against the three WebSocket echo endpoints
# (tools/autobahn.sh), these at once.
# Each step's heading gives the seconds since the start.
# Idempotent: a second run reuses what the first installed and built.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
step() { echo "== $* [$((SECONDS / 60))m$((SECONDS % 60))s]"; }
# Jobs started beside a step (the other CPythons' builds, the runner's tests, Autobahn) end
# with the script, whichever step stops it.
trap 'jobs -p | xargs -r kill 2>/dev/null || true' EXIT

# --- Debian packages: compiler, liburing (io_uring), llhttp sources, zlib (WebSocket
# permessage-deflate), OpenSSL (HTTPS), pkg-config, clang-format for the format check, and the
# curl and openssl commands the HTTPS tests drive as real clients (they skip without them).
debs=(gcc libc6-dev pkg-config liburing-dev node-llhttp zlib1g-dev libssl-dev python3-dev clang-format
  curl openssl)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-dev is only needed when this python has no headers of its own.
if python3 -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")) else 1)'; then
  missing=("${missing[@]/python3-dev}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Python tools in a private venv: tools/test-requirements.txt (the build,
# pytest, the frameworks the adapter tests serve, uvloop, mypy, ruff).
venv=$root/build/venv
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p build
  python3 -m venv "$venv"
fi
py=$venv/bin/python
if ! "$py" -c 'import sys, mesonpy, pytest, flask, fastapi, multipart, django, uvloop, h11, ruff, websockets, channels, dotenv, yaml, trustme; sys.version_info < (3, 10) or __import__("mypy")' 2>/dev/null; then
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q -r tools/test-requirements.txt
fi
export PATH=$venv/bin:$PATH

# --- Lint and format, first because they take seconds: ruff ([tool.ruff] in
# pyproject.toml) and clang-format (.clang-format) over the project's own C, never
# llhttp. tools/format.sh fixes what the format checks find.
step "lint and format: ruff check, ruff format --check, clang-format --dry-run"
ruff check -q .
ruff format -q --check .
find core include binding examples tests/c tests/fuzz benchmarks/wsload benchmarks/wrktls -name '*.[ch]' -print0 \
  | xargs -0 clang-format --dry-run -Werror

setup() { # setup DIR ARGS...: configure once, reconfigure after
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null
  else meson setup "$dir" "$@" >/dev/null; fi
}

step "C build and tests"
setup build/test -Dpython=false --buildtype=debugoptimized
meson compile -C build/test >/dev/null # everything, hello_server too: the knob-table tests run it
meson test -C build/test --print-errorlogs --num-processes 2

step "C tests under ASan + UBSan"
setup build/asan -Dpython=false --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build/asan --print-errorlogs --num-processes 2

# --- libFuzzer harnesses (tests/fuzz): clang only for this step. Each runs for
# FUZZ_SECONDS (default 12: six harnesses in 72 s, the suite under 10 minutes); a crash or a
# failed framing or property check fails the suite.
# Long runs: tools/fuzz.sh SECONDS (see tests/fuzz/README.md).
fuzz_missing=()
for p in clang libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || fuzz_missing+=("$p")
done
if [ ${#fuzz_missing[@]} -gt 0 ]; then
  step "installing Debian packages for fuzzing: ${fuzz_missing[*]}"
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${fuzz_missing[@]}" >/dev/null
fi
# --- The oldest and the newest CPython this machine has besides the main one
# (pyenv's), so that C-API differences show here rather than at a user's.
others=()
for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.*/bin/python3; do
  [ -x "$p" ] && "$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    && others+=("$("$p" -c 'import sys; print("%d.%02d" % sys.version_info[:2])') $p")
done
main=$("$py" -c 'import sys; print("%d.%02d" % sys.version_info[:2])')
others=($(printf '%s\n' "${others[@]}" | grep -v "^$main " | sort | sed -n '1p;$p' | uniq \
  | cut -d' ' -f2))
# Their venvs and builds are made beside the fuzzers (one core each is enough), their
# tests run beside this CPython's below.
pythons_build_pid=
if [ ${#others[@]} -gt 0 ]; then
  PYTHONS_PHASE=build tools/test-pythons.sh "${others[@]}" >build/pythons-build.log 2>&1 &
  pythons_build_pid=$!
fi

# The benchmark runner's own tests run beside the fuzzers (a fuzzer keeps one core
# busy; the runner's tests mostly wait on their servers): a minute less in all.
step "fuzzing, ${FUZZ_SECONDS:-12} s per harness, and the benchmark runner's own tests beside it"
runner_log=build/runner-tests.log
"$py" -m pytest -q benchmarks/tests >"$runner_log" 2>&1 &
runner_pid=$!
if ! tools/fuzz.sh "${FUZZ_SECONDS:-12}"; then
  kill "$runner_pid" 2>/dev/null || true
  exit 1
fi
step "benchmark runner's own tests (run beside the fuzzers; log $runner_log)"
if ! wait "$runner_pid"; then
  cat "$runner_log"
  exit 1
fi
tail -n 1 "$runner_log"

if [ -d tests/python ]; then
  if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    step "type check: mypy, strict on the package ([tool.mypy] in pyproject.toml)"
    "$py" -m mypy
  else
    step "no type check: mypy needs Python 3.10 or later"
  fi
fi

# --- The Python tests under this CPython, the same tests under the other CPythons, and
# Autobahn|Testsuite (tools/autobahn.sh), the WebSocket conformance suite, against the C
# example server, the native API and a Starlette app on the ASGI adapter (cases 1-7, 10, 12
# and 13; any FAILED or UNIMPLEMENTED case fails the suite, and so does a missing CPython
# 2.7: the suite runs on Python 2 only, pyenv's is used), all at once: each run mostly
# waits on its servers and clients (one run alone took 135 s, three at once 150 s), so
# together they take two and a half minutes less than one after the other.
if [ ${#others[@]} -gt 0 ]; then
  if ! wait "$pythons_build_pid"; then
    cat build/pythons-build.log
    exit 1
  fi
fi
step "the package into build/venv; autobahn's own tests, then Autobahn|Testsuite in the background (log build/autobahn.log)"
"$py" -m pip install -q --no-build-isolation .
(cd build && "$py" -m pytest -q "$root/tests/autobahn") # the step's own verdict, first
AUTOBAHN_PYTHON=$py tools/autobahn.sh >build/autobahn.log 2>&1 &
autobahn_pid=$!
others_pid=
if [ ${#others[@]} -gt 0 ]; then
  PYTHONS_PHASE=test tools/test-pythons.sh "${others[@]}" >build/pythons-test.log 2>&1 &
  others_pid=$!
fi
if [ -d tests/python ]; then
  step "Python tests (the other CPythons' beside them: log build/pythons-test.log)"
  (cd build && "$py" -m pytest -q "$root/tests/python")
fi
if [ -n "$others_pid" ]; then
  step "the other CPythons' verdict (log build/pythons-test.log)"
  if ! wait "$others_pid"; then
    cat build/pythons-test.log
    exit 1
  fi
  grep '^== Python' build/pythons-test.log
else
  step "no other CPython found: tests ran under $("$py" --version) only"
fi
step "autobahn's verdict (log build/autobahn.log)"
if ! wait "$autobahn_pid"; then
  cat build/autobahn.log
  exit 1
fi
tail -n 1 build/autobahn.log
step "all passed"
