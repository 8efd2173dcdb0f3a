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
step "$py" -m pytest -q -p no:cacheprovider tests/e2e tests/security sdk/python/tests

# The same suites against an AddressSanitizer + UBSan build of moatd, the CLI,
# moat-init and the unit tests. moat-init runs in sandboxes as a static binary,
# which cannot carry the sanitizer runtimes: there it has UBSan in trap mode,
# and tests/init drives its dynamic ASan+UBSan twin. UBSan aborts on the first finding;
# LeakSanitizer makes moatd exit non-zero at shutdown, which the harness
# reports. A small quarantine keeps moatd's RSS near its real size, since the
# flood test bounds it.
if [ "${MOAT_SKIP_SANITIZERS:-}" != 1 ]; then
  asan="${build}-asan"
  [ -f "$asan/build.ninja" ] || meson setup "$asan" -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
  step ninja -C "$asan"
  export ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=4:thread_local_quarantine_size_kb=64
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  step meson test -C "$asan" --print-errorlogs
  MOAT_BUILD="$asan" MOAT_INIT="$asan/src/init/moat-init-sanitized" step "$py" -m pytest -q -p no:cacheprovider tests/init
  export MOAT_BUILD="$asan"
  step "$py" -m pytest -q -p no:cacheprovider tests/e2e tests/security sdk/python/tests
fi
# Fuzzing smoke: each libFuzzer harness (fuzz/) for 10 s on its seed corpus,
# in a clang ASan+UBSan build of its own. It proves every harness still builds
# and that no seed regressed; `make fuzz` is for the long runs.
if [ "${MOAT_SKIP_FUZZ:-}" != 1 ]; then
  step scripts/fuzz.sh "${build}-fuzz" "${MOAT_FUZZ_SECONDS:-10}"
fi
exit $status
