#!/usr/bin/env bash
# The Python tests under other interpreters: each PYTHON given (default: every
# CPython 3.9+ that pyenv has) gets a venv under build/pythons/, the package
# built into it from this checkout, and the whole of tests/python.
#   tools/test-pythons.sh                       # every pyenv CPython >= 3.9
#   tools/test-pythons.sh /usr/bin/python3.13   # just these
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

failed=()
for python in "${pythons[@]}"; do
  version=$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
  venv=$root/build/pythons/$version
  echo "== Python $version ($python)"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  if ! "$venv/bin/python" -c 'import mesonpy, pytest, flask, fastapi, multipart, django, uvloop, h11, websockets' \
      2>/dev/null; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r tools/test-requirements.txt
  fi
  # A copy of the checkout: meson-python builds in place otherwise, and each
  # interpreter needs its own build of the extension.
  work=$root/build/pythons/src-$version
  rm -rf "$work" && mkdir -p "$work"
  git ls-files -z | xargs -0 cp --parents -t "$work"
  if (PATH=$venv/bin:$PATH && cd "$work" && python -m pip install -q --no-build-isolation . \
      && cd "$root/build" && python -m pytest -q -p no:cacheprovider "$root/tests/python"); then
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
