#!/bin/bash
# `make run`: start moatd on its embedded defaults (state in /var/lib/moat,
# socket /run/moat/moatd.sock, the `host` image), show a sandbox working,
# then keep moatd in the foreground until Ctrl-C.
set -euo pipefail
build=$(realpath "${1:-build}")
moatd="$build/src/daemon/moatd"
moat="$build/src/cli/moat"
log=/run/moat/moatd.log

if [ "$(id -u)" -ne 0 ]; then
  echo "make run: moatd needs root (namespaces, cgroups, idmapped mounts)" >&2
  exit 1
fi
"$moat" doctor || { echo "make run: fix the failing checks above first" >&2; exit 1; }

mkdir -p /run/moat
"$moatd" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT INT TERM
for _ in $(seq 100); do
  "$moat" ls >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.05
done

set -x
"$moat" run -- sh -c 'echo "hello from $(hostname)"; id; cat /proc/1/cmdline | tr "\0" " "; echo'
id=$("$moat" create --tag demo=1)
"$moat" exec "$id" -- python3 -c 'import os, platform; print("python", platform.python_version(), "pid", os.getpid())'
"$moat" ls
"$moat" rm "$id"
set +x
echo
echo "moatd is running (pid $pid, log $log). Try: $moat run -- bash -c 'uname -a'"
echo "Ctrl-C stops it."
wait $pid
