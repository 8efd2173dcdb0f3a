#!/bin/bash
# Build the libFuzzer harnesses (fuzz/) with clang + ASan + UBSan and run each
# for SECONDS on a copy of its seed corpus.
#   scripts/fuzz.sh [BUILD_DIR [SECONDS]]     (defaults: build-fuzz 60)
# The seeds in fuzz/corpus/<harness>/ are copied into BUILD_DIR/corpus/<harness>/,
# where libFuzzer also keeps the new inputs it finds, so the repo's corpus is
# never changed. Crash, leak and timeout inputs go to BUILD_DIR/crashes/.
# Prints harness / executions / crashes and exits 1 if any harness failed.
set -euo pipefail

cd "$(dirname "$0")/.."
build=${1:-build-fuzz}
seconds=${2:-60}
jobs=${FUZZ_JOBS:-$(nproc)}
harnesses=(fuzz_http fuzz_request fuzz_init_channel fuzz_init_control fuzz_oci_layer fuzz_oci_image fuzz_image_spec
           fuzz_dns)

if ! command -v clang >/dev/null; then
  echo "fuzz: clang is not installed (scripts/install-deps.sh installs it)" >&2
  exit 1
fi
if [ ! -f "$build/build.ninja" ]; then
  CC=clang meson setup "$build" -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false -Dtests=disabled \
    >"$build.setup.log" 2>&1 || { cat "$build.setup.log" >&2; exit 1; }
  mv "$build.setup.log" "$build/setup.log"
elif ! grep -q 'fuzz/fuzz_http' "$build/build.ninja"; then
  echo "fuzz: $build is not a fuzz build (CC=clang meson setup $build -Dfuzz=true ...); use a new directory" >&2
  exit 1
fi
ninja -C "$build" "${harnesses[@]/#/fuzz/}"

# Scratch files of the layer and image harnesses: tmpfs, removed at the end
# whatever happens (a harness killed on timeout cannot clean up itself).
scratch=$(mktemp -d /dev/shm/moat-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$build/crashes"

run_one() {
  local name=$1 corpus="$build/corpus/$1" log="$build/fuzz-$1.log" dict=()
  mkdir -p "$corpus"
  cp -n fuzz/corpus/"$name"/* "$corpus"/ 2>/dev/null || true
  [ -f "fuzz/$name.dict" ] && dict=(-dict="fuzz/$name.dict")
  # -timeout: one input that takes this long is a hang; -rss_limit_mb: a leak or a bomb.
  local rc=0
  TMPDIR="$scratch" ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$build/fuzz/$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$build/crashes/$name-" "${dict[@]}" "$corpus" >"$log" 2>&1 || rc=$?
  echo "$rc" >"$log.rc"
}

started=$(date +%s)
for name in "${harnesses[@]}"; do
  rm -f "$build"/crashes/"$name"-*
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_one "$name" &
done
wait

failed=0
printf '%-20s %12s %8s\n' harness execs crashes
for name in "${harnesses[@]}"; do
  log="$build/fuzz-$name.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(find "$build/crashes" -name "$name-*" | wc -l)
  rc=$(cat "$log.rc")
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  printf '%-20s %12s %8s\n' "$name" "${execs:-?}" "$crashes"
  if [ "$crashes" -ne 0 ]; then
    failed=1
    grep -m1 -E 'ERROR: |runtime error|deadly signal' "$log" | sed "s/^/  $name: /" || true
    echo "  log: $log" >&2
  fi
done
echo "fuzz: $(( $(date +%s) - started ))s of fuzzing, logs in $build/fuzz-*.log"
exit $failed
