#!/bin/bash
# Run every test: C unit tests (meson), the moat-init protocol suite, the
# end-to-end suite against a real moatd, and the Python SDK suite.
# Usage: scripts/test.sh BUILD_DIR
set -uo pipefail
build=$(realpath "${1:-build}")
cd "$(dirname "$0")/.."
export MOAT_BUILD="$build"
py=/usr/bin/python3 # Debian's python3 carries pytest; the first one on PATH may not

status=0
step() {
  echo "== $*"
  "$@"
  local rc=$?
  # pytest's 5 means "no tests collected": a suite that ran nothing is a failure here too.
  if [ $rc -ne 0 ]; then
    echo "== FAILED ($rc): $*"
    status=1
  fi
}

step meson test -C "$build" --print-errorlogs
step "$py" -m pytest -q -p no:cacheprovider tests/init
step "$py" -m pytest -q -p no:cacheprovider tests/e2e sdk/python/tests
exit $status
