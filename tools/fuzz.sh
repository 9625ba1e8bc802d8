#!/usr/bin/env bash
# Run the libFuzzer harnesses of tests/fuzz (see tests/fuzz/README.md).
#
#   tools/fuzz.sh [SECONDS] [HARNESS...]   fuzz each harness for SECONDS (default 60);
#                                          harnesses: request chunked ws raw static tls (default all)
#   tools/fuzz.sh --coverage [HARNESS...]  replay the kept corpus through a
#                                          coverage build; llvm-cov report (core/,
#                                          llhttp, the harnesses)
#
# Needs clang and its runtimes (Debian: apt-get install clang libclang-rt-14-dev;
# tools/test.sh installs them). Builds build/fuzz (clang, ASan+UBSan, libFuzzer).
# The corpus grows in build/fuzz-corpus/HARNESS (seeded from tests/fuzz/corpus),
# crashes and failed checks are written to build/fuzz-artifacts/. Exits 1 if a
# harness crashed or a check failed. Set FUZZ_JOBS=N to fuzz N processes per
# harness (libFuzzer's -fork; long runs; default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if ! command -v clang >/dev/null; then
  echo "fuzz: clang not found: apt-get install clang libclang-rt-14-dev" >&2
  exit 2
fi

coverage=0
seconds=60
if [ "${1:-}" = "--coverage" ]; then coverage=1; shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(request chunked ws raw static tls)

setup() { # setup DIR ARGS...: configure once, reconfigure after
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null
  else CC=clang meson setup "$dir" "$@" >/dev/null; fi
}

mkdir -p build/fuzz-corpus build/fuzz-artifacts
for h in "${harnesses[@]}"; do
  mkdir -p "build/fuzz-corpus/$h"
done

if [ $coverage -eq 1 ]; then
  # clang's source-based coverage over the kept corpus; UBSan only for the
  # runtime that -fsanitize=fuzzer-no-link needs in hello_server.
  flags='-fprofile-instr-generate -fcoverage-mapping'
  export LLVM_PROFILE_FILE=$root/build/fuzz-cov/setup-%p.profraw # meson's compiler checks
  setup build/fuzz-cov -Dfuzz=true -Dtests=false -Dpython=false --buildtype=debug \
    -Db_sanitize=undefined -Db_lundef=false -Dc_args="$flags" -Dc_link_args="$flags"
  ninja -C build/fuzz-cov >/dev/null
  rm -f build/fuzz-cov/*.profraw
  objs=()
  for h in "${harnesses[@]}"; do
    LLVM_PROFILE_FILE="$root/build/fuzz-cov/$h-%p.profraw" \
      "build/fuzz-cov/tests/fuzz/fuzz_$h" -runs=0 -max_len=4096 \
      "build/fuzz-corpus/$h" "tests/fuzz/corpus/$h" >/dev/null 2>&1
    objs+=(-object "build/fuzz-cov/tests/fuzz/fuzz_$h")
  done
  llvm-profdata merge -sparse build/fuzz-cov/*.profraw -o build/fuzz-cov/fuzz.profdata
  llvm-cov report "${objs[@]:1}" -instr-profile=build/fuzz-cov/fuzz.profdata
  exit 0
fi

setup build/fuzz -Dfuzz=true -Dtests=false -Dpython=false --buildtype=debugoptimized \
  -Db_sanitize=address,undefined -Db_lundef=false
ninja -C build/fuzz >/dev/null

export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
failed=0
for h in "${harnesses[@]}"; do
  log=build/fuzz-artifacts/$h.log
  echo "== fuzz_$h for ${seconds} s (corpus build/fuzz-corpus/$h, log $log)"
  # -timeout: one input may take this long (a wedged connection is a failure
  # the harness reports itself after 5 s); leaks are left to the ASan C tests
  # (the engine pools requests across inputs).
  set +e
  fork=()
  [ "${FUZZ_JOBS:-1}" -gt 1 ] && fork=(-fork="$FUZZ_JOBS" -ignore_crashes=0)
  "build/fuzz/tests/fuzz/fuzz_$h" -max_total_time="$seconds" -max_len=4096 -timeout=30 \
    "${fork[@]}" -print_final_stats=1 \
    -artifact_prefix="build/fuzz-artifacts/$h-" \
    "build/fuzz-corpus/$h" "tests/fuzz/corpus/$h" >"$log" 2>&1
  rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    failed=1
    echo "fuzz_$h FAILED (exit $rc):"
    grep -A4 "fuzz check failed\|ERROR: \|SUMMARY" "$log" | head -40
    ls build/fuzz-artifacts/"$h"-* 2>/dev/null | grep -v '\.log$' || true
    continue
  fi
  # The last status line: "#N DONE cov: C ft: F corp: ... exec/s: E ..."
  line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1 || true)
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  if [ -z "$execs" ]; then # -fork: "#N: cov: C ft: F corp: K exec/s E ..."
    line=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 || true)
    echo "fuzz_$h: $(echo "$line" | grep -oE '^#[0-9]+' | tr -d '#') executions;" \
      "$(echo "$line" | grep -oE 'ft: [0-9]+ corp: [0-9]+') ;" \
      "$(echo "$line" | grep -oE 'exec/s [0-9]+' | grep -oE '[0-9]+') exec/s (fork mode)"
    continue
  fi
  echo "fuzz_$h: ${execs:-?} executions; $(echo "$line" | grep -oE 'cov: [0-9]+ ft: [0-9]+') ;" \
    "$(echo "$line" | grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*') ;" \
    "$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?') exec/s"
done
exit $failed
