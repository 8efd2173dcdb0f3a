#!/bin/bash
# Install the Debian packages moat needs to build, test and benchmark.
# Idempotent: installs only what is missing, and touches apt only then.
set -euo pipefail

build=(meson ninja-build pkg-config gcc clang libc6-dev libldns-dev libmnl-dev libnftables-dev nftables
       libarchive-dev libssl-dev debootstrap e2fsprogs
       libevent-dev libjansson-dev libseccomp-dev libsqlite3-dev libcurl4-openssl-dev)
test=(libcmocka-dev python3 python3-pytest iproute2 procps util-linux skopeo docker-registry openssl)
bench=(crun runc runsc bubblewrap)

want=("${build[@]}" "${test[@]}")
case "${1:-}" in
  --bench) want+=("${bench[@]}") ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
