#!/bin/bash
# Side-by-side benchmark: how long each runtime takes to start a fresh
# sandbox running `true` in the same Debian rootfs and tear it down, against
# the kernel's floors; plus moat's exec round trip and create throughput.
#
#   bench/run.sh [BUILD_DIR]          (make bench; BUILD_DIR defaults to build)
#
# Environment:
#   BENCH_N         iterations per measurement (default 200)
#   BENCH_SECONDS   length of the moat throughput run (default 10)
#   BENCH_CONNS     concurrent connections in it (default 4)
#   BENCH_ONLY      space-separated subset of: floor moat bwrap crun runc runsc
#   BENCH_ROOTFS    rootfs cache (default /var/cache/moat-bench/rootfs)
#
# Each runtime is its own section: one that is not installed, or fails, is
# reported as skipped with the reason and the others still run. The table goes
# to stdout and bench/results/latest.txt; raw samples (ns) to
# bench/results/latest.d/.
set -uo pipefail

bench_dir=$(cd "$(dirname "$0")" && pwd)
build_arg=${1:-build}
build=$(cd "$build_arg" 2>/dev/null && pwd) || build=""
n=${BENCH_N:-200}
seconds=${BENCH_SECONDS:-10}
conns=${BENCH_CONNS:-4}
only=${BENCH_ONLY:-floor moat bwrap crun runc runsc}
rootfs=${BENCH_ROOTFS:-/var/cache/moat-bench/rootfs}

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: must run as root (the runtimes create namespaces and cgroups as root)" >&2
  exit 1
fi
case "$n" in ''|*[!0-9]*|0) echo "bench: BENCH_N must be a positive integer" >&2; exit 1 ;; esac

results="$bench_dir/results"
samples="$results/latest.d"
rm -rf "$samples"
mkdir -p "$samples"
work=$(mktemp -d /tmp/moat-bench.XXXXXX)
moatd_pid=""
cgroup_parent="moat-bench-$$"

stop_moatd() {
  [ -n "$moatd_pid" ] || return 0
  kill -TERM "$moatd_pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$moatd_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$moatd_pid" 2>/dev/null; then
    echo "bench: moatd did not stop on SIGTERM in 10 s; killing it" >&2
    kill -KILL "$moatd_pid"
  fi
  wait "$moatd_pid" 2>/dev/null
  moatd_pid=""
}

cleanup() {
  stop_moatd
  # Never follow a mount the daemon may have left behind into the host's
  # files: --one-file-system stops at every mount point, and we say so.
  if grep -q " $work/" /proc/self/mountinfo; then
    echo "bench: mounts left under $work (moatd leaked them):" >&2
    grep " $work/" /proc/self/mountinfo | awk '{print "  " $5}' >&2
  fi
  rm -rf --one-file-system "$work"
  # Empty cgroups only: rmdir refuses one that still holds a process.
  find /sys/fs/cgroup/*/"$cgroup_parent" -depth -type d -exec rmdir {} + 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wanted() {
  [[ " $only " == *" $1 "* ]] && return 0
  local m
  case $1 in
    floor) set -- floor_fork_exec floor_clone7_exec ;;
    moat) set -- moat_total moat_exec_run moat_exec_stream moat_throughput ;;
  esac
  for m in "$@"; do echo "not selected (BENCH_ONLY)" > "$samples/$m.skip"; done
  return 1
}
skip() { echo "$2" > "$samples/$1.skip"; echo "bench: $1: skipped: $2"; }
skip_moat() { # every moat measurement has the same reason when moatd is missing
  local m
  for m in moat_total moat_exec_run moat_exec_stream moat_throughput; do
    echo "$1" > "$samples/$m.skip"
  done
  echo "bench: moat: skipped: $1"
}
say() { echo "bench: $*"; }

# Other work on the host moves every median; the report shows how busy it was.
echo "load_start $(cut -d' ' -f1-3 /proc/loadavg)" > "$samples/meta.txt"

# ---- tools: built with cc directly, so the bench does not depend on meson ----
cflags=(-O2 -Wall -Wextra)
for tool in floor cmd_bench moat_bench; do
  cc "${cflags[@]}" -pthread -o "$work/$tool" "$bench_dir/$tool.c" ||
    { echo "bench: failed to compile bench/$tool.c" >&2; exit 1; }
done
# netperf runs inside sandboxes, whose libraries may not be the host's: static.
cc "${cflags[@]}" -static -o "$work/netperf" "$bench_dir/netperf.c" ||
  { echo "bench: failed to compile bench/netperf.c (needs libc.a from libc6-dev)" >&2; exit 1; }

"$bench_dir/rootfs.sh" "$rootfs" || { echo "bench: no rootfs, nothing to compare" >&2; exit 1; }

# ---- floors ----
if wanted floor; then
  say "floors: fork+exec and clone-7-namespaces+exec, $n each"
  "$work/floor" "$n" "$samples" || {
    skip floor_fork_exec "floor failed"; skip floor_clone7_exec "floor failed"; }
fi

# ---- moat ----
moat_section() {
  local moatd="$build/src/daemon/moatd"
  if [ -z "$build" ] || [ ! -x "$moatd" ]; then
    skip_moat "no moatd at ${build:-$build_arg}/src/daemon/moatd (build it first)"
    return
  fi
  local mb=("$work/moat_bench" -S "$work/s.sock")
  mkdir -p "$work/data" "$work/run"
  say "moat: starting $moatd (data and socket in $work)"
  # Its own cgroup parent, so what this moatd leaves behind is told apart
  # from any other moatd on the host, and removed.
  "$moatd" --data-dir "$work/data" --run-dir "$work/run" --socket "$work/s.sock" \
    --cgroup-parent "$cgroup_parent" --net-prefix mbench --net-pool4 10.88.0.0/16 \
    --net-pool6 fd6d:6f61:7488::/48 > "$work/moatd.log" 2>&1 &
  moatd_pid=$!
  local waited=0
  until "${mb[@]}" health 1 > /dev/null 2>&1; do
    if ! kill -0 "$moatd_pid" 2>/dev/null || [ $((waited += 1)) -ge 20 ]; then
      skip_moat "moatd did not become healthy; log: $(tail -n 5 "$work/moatd.log" | tr '\n' ' ')"
      stop_moatd
      return
    fi
  done
  say "moat: importing $rootfs as image bench-rootfs"
  if ! "${mb[@]}" import "$rootfs" bench-rootfs; then
    skip_moat "image import failed; log: $(tail -n 5 "$work/moatd.log" | tr '\n' ' ')"
    return
  fi
  say "moat: create+run+delete x $n"
  "${mb[@]}" lifecycle bench-rootfs "$n" "$samples" ||
    tail -n 20 "$work/moatd.log" | sed 's/^/  moatd: /'
  say "moat: exec round trip x $n (run, then execs+output)"
  "${mb[@]}" exec bench-rootfs "$n" "$samples" ||
    tail -n 20 "$work/moatd.log" | sed 's/^/  moatd: /'
  say "moat: throughput, $conns connections for $seconds s"
  "${mb[@]}" throughput bench-rootfs "$conns" "$seconds" "$samples" ||
    tail -n 20 "$work/moatd.log" | sed 's/^/  moatd: /'
  say "moat: images: create from a 6-layer image vs host, unchanged rebuild, 10 MiB snapshot"
  /usr/bin/python3 "$bench_dir/image_bench.py" --socket "$work/s.sock" -n "$((n < 50 ? n : 50))" \
    --json "$samples/image.json" > "$samples/image.txt" ||
    tail -n 20 "$work/moatd.log" | sed 's/^/  moatd: /'
  say "moat: files: 256 MiB up and down, 1,000 small files, a 10,000-entry listing"
  /usr/bin/python3 "$bench_dir/files_bench.py" --socket "$work/s.sock" --json "$samples/files.json" \
    > "$samples/files.txt" || tail -n 20 "$work/moatd.log" | sed 's/^/  moatd: /'
  say "moat: network: create per mode x $n, TCP throughput through the veth"
  /usr/bin/python3 "$bench_dir/net_bench.py" --socket "$work/s.sock" --netperf "$work/netperf" \
    -n "$n" --seconds "${BENCH_NET_SECONDS:-5}" --json "$samples/net.json" > "$samples/net.txt" ||
    tail -n 20 "$work/moatd.log" | sed 's/^/  moatd: /'
  stop_moatd
  cp "$work/moatd.log" "$samples/moatd.log"
  if grep -q " $work/" /proc/self/mountinfo; then
    echo "bench: moat: moatd left mounts under $work after it stopped" >&2
  fi
  local leaked
  leaked=$(find /sys/fs/cgroup/*/"$cgroup_parent" -mindepth 1 -type d 2>/dev/null | wc -l)
  [ "$leaked" -eq 0 ] || echo "bench: moat: moatd left $leaked cgroups under /sys/fs/cgroup/*/$cgroup_parent" >&2
}
wanted moat && moat_section

# ---- command-line runtimes ----
bundle() { # bundle RUNTIME_FOR_SPEC DIR
  mkdir -p "$2" && (cd "$2" && "$1" spec) &&
    /usr/bin/python3 "$bench_dir/oci_bundle.py" "$2" "$rootfs" > /dev/null
}

if wanted bwrap; then
  if ! command -v bwrap > /dev/null; then
    skip bwrap "bwrap not installed (apt-get install bubblewrap)"
  else
    say "bwrap: x $n"
    "$work/cmd_bench" bwrap "$n" "$samples" -- \
      bwrap --unshare-all --die-with-parent --ro-bind "$rootfs" / --proc /proc --dev /dev \
      --setenv PATH /usr/sbin:/usr/bin:/sbin:/bin true
  fi
fi

if wanted crun; then
  if ! command -v crun > /dev/null; then
    skip crun "crun not installed (apt-get install crun)"
  elif ! bundle crun "$work/bundle-crun"; then
    skip crun "could not generate the OCI bundle with crun spec"
  else
    say "crun: x $n"
    # crun 1.8 refuses a hybrid cgroup layout (v1 controllers plus an empty v2
    # tree at /sys/fs/cgroup/unified). Unmount the v2 tree only in a private
    # mount namespace (unshare -m makes mounts private): the host keeps it.
    if grep -q " /sys/fs/cgroup/unified " /proc/self/mountinfo; then
      pre='umount /sys/fs/cgroup/unified && '
    else
      pre=''
    fi
    unshare -m sh -c "$pre"'exec "$@"' sh \
      "$work/cmd_bench" -s '/run/crun/{id}' -c 'crun delete -f {id}' crun "$n" "$samples" -- \
      crun run --bundle "$work/bundle-crun" '{id}'
  fi
fi

if wanted runc; then
  if ! command -v runc > /dev/null; then
    skip runc "runc not installed (apt-get install runc)"
  elif ! bundle runc "$work/bundle-runc"; then
    skip runc "could not generate the OCI bundle with runc spec"
  else
    say "runc: x $n"
    "$work/cmd_bench" -s '/run/runc/{id}' -c 'runc delete -f {id}' runc "$n" "$samples" -- \
      runc run --bundle "$work/bundle-runc" '{id}'
  fi
fi

if wanted runsc; then
  if ! command -v runsc > /dev/null; then
    skip runsc "runsc not installed (apt-get install runsc)"
  else
    if ! bundle runsc "$work/bundle-runsc"; then
      skip runsc "could not generate the OCI bundle with runsc spec"
    else
      say "runsc: x $n (ptrace platform: the only one that works on this host)"
      "$work/cmd_bench" -s '/run/runsc/{id}' -c 'runsc delete -force {id}' runsc "$n" "$samples" -- \
        runsc --platform=ptrace --network=none run --bundle "$work/bundle-runsc" '{id}'
    fi
  fi
fi

echo "load_end $(cut -d' ' -f1-3 /proc/loadavg)" >> "$samples/meta.txt"
echo
/usr/bin/python3 "$bench_dir/report.py" "$samples" "$n" | tee "$results/latest.txt"
