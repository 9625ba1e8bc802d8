#!/usr/bin/env bash
# Applies the formatters to the tree: ruff format (and ruff's import sorting) for
# Python, clang-format for the project's C (.clang-format; never llhttp or anything
# outside the repository). tools/test.sh checks that nothing is left to do.
# Needs ruff (tools/test-requirements.txt; build/venv has it after tools/test.sh)
# and clang-format (Debian: apt-get install clang-format).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$(pwd)/build/venv/bin:$PATH

ruff check --select I --fix -q .
ruff format -q .
find core include binding examples tests/c tests/fuzz benchmarks/wsload benchmarks/wrktls -name '*.[ch]' -print0 | xargs -0 clang-format -i
