#!/usr/bin/env bash
# The Python tests under other interpreters: each PYTHON given (default: every
# CPython 3.9+ that pyenv has) gets a venv under build/pythons/, the package
# built into it from this checkout, and the whole of tests/python.
#   tools/test-pythons.sh                       # every pyenv CPython >= 3.9
#   tools/test-pythons.sh /usr/bin/python3.13   # just these
# PYTHONS_PHASE=build makes the venvs and builds only; PYTHONS_PHASE=test then runs the
# tests on those builds (tools/test.sh builds beside the fuzzers, tests beside Autobahn);
# the default does both.
# Needs what tools/test.sh installs (run that first on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

pythons=("$@")
if [ ${#pythons[@]} -eq 0 ]; then
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.*/bin/python3; do
    [ -x "$p" ] && "$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
      && pythons+=("$p")
  done
fi
if [ ${#pythons[@]} -eq 0 ]; then
  echo "no interpreters found: give their paths" >&2
  exit 2
fi

# One interpreter: venv, the package built from a copy of the checkout, the tests.
run_one() { # run_one PYTHON VERSION
  local python=$1 version=$2
  local venv=$root/build/pythons/$version
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  if ! "$venv/bin/python" -c 'import mesonpy, pytest, flask, fastapi, multipart, django, uvloop, h11, websockets, trustme' \
      2>/dev/null; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r tools/test-requirements.txt
  fi
  # A copy of the checkout: meson-python builds in place otherwise, and each
  # interpreter needs its own build of the extension.
  local work=$root/build/pythons/src-$version
  if [ "${PYTHONS_PHASE:-all}" != test ]; then
    rm -rf "$work" && mkdir -p "$work"
    git ls-files -z | xargs -0 cp --parents -t "$work"
    (PATH=$venv/bin:$PATH && cd "$work" && python -m pip install -q --no-build-isolation .) \
      || return 1
  fi
  [ "${PYTHONS_PHASE:-all}" = build ] && return 0
  (PATH=$venv/bin:$PATH && cd "$root/build" \
    && python -m pytest -q -p no:cacheprovider "$root/tests/python")
}

# The interpreters run at once (most of a test run is waiting on sockets and
# timers, so two share two cores well); each one's output is shown whole when
# it is done. PYTHONS_SERIAL=1 runs them one after the other.
mkdir -p "$root/build/pythons"
failed=()
pids=()
versions=()
for python in "${pythons[@]}"; do
  version=$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
  versions+=("$version")
  log=$root/build/pythons/$version.log
  echo "== Python $version ($python): log $log"
  if [ "${PYTHONS_SERIAL:-0}" = 1 ]; then
    run_one "$python" "$version" >"$log" 2>&1 &
    wait $! && pids+=(0) || pids+=(1)
  else
    run_one "$python" "$version" >"$log" 2>&1 &
    pids+=($!)
  fi
done
for i in "${!versions[@]}"; do
  version=${versions[$i]}
  if [ "${PYTHONS_SERIAL:-0}" = 1 ]; then rc=${pids[$i]}; else wait "${pids[$i]}" && rc=0 || rc=$?; fi
  cat "$root/build/pythons/$version.log"
  if [ "$rc" = 0 ] && [ "${PYTHONS_PHASE:-all}" = build ]; then
    echo "== Python $version: built"
  elif [ "$rc" = 0 ]; then
    echo "== Python $version: passed"
  else
    echo "== Python $version: FAILED"
    failed+=("$version")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed under: ${failed[*]}"
  exit 1
fi
