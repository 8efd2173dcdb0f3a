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
# Network: none by default; an allow-list admits only the Debian mirror this
# host uses (the one outside address reachable here), by name through moatd's
# resolver; anything else is refused on the host.
mirror=$(sed -n 's|^URIs: *https\?://\([^/ ]*\).*|\1|p; s|^deb *https\?://\([^/ ]*\).*|\1|p' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n 1 || true)
mirror=${mirror:-deb.debian.org}
"$moat" run -- python3 -c 'import socket; socket.create_connection(("'"$mirror"'", 80), timeout=3)' 2>&1 | tail -n 1 ||
  echo "(refused, as it should be: network none)"
"$moat" run --network "allow:$mirror" -- python3 -c \
  'import urllib.request as u; print(u.urlopen("http://'"$mirror"'/debian/", timeout=5).status, "from '"$mirror"'")'
"$moat" run --network "allow:$mirror" -- python3 -c \
  'import socket; socket.create_connection(("192.0.2.1", 80), timeout=3)' 2>&1 | tail -n 1 ||
  echo "(refused, as it should be: not in the allow-list)"
set +x
echo
echo "moatd is running (pid $pid, log $log). Try: $moat run -- bash -c 'uname -a'"
echo "Ctrl-C stops it."
wait $pid
