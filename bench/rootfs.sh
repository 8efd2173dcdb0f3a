#!/bin/bash
# Build (once) the Debian root filesystem every runtime in the benchmark boots,
# so they all start the same `true` from the same files.
#
#   bench/rootfs.sh [DIR]     (default /var/cache/moat-bench/rootfs)
#
# The mirror is the one this host's apt already uses (override: BENCH_MIRROR),
# because that is the only network this kind of machine reaches. The build goes
# to DIR.partial and is renamed into place only when debootstrap succeeded, so a
# run that was interrupted never leaves a half-built tree that looks reusable.
set -euo pipefail

dir=${1:-/var/cache/moat-bench/rootfs}
suite=${BENCH_SUITE:-bookworm}

# Prints the first mirror URL apt is configured with for $suite: deb822
# .sources files first (Debian 12's default), then one-line sources.list.
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    # Paragraphs are separated by blank lines; take the URIs of one whose
    # Types has "deb" and whose Suites has exactly $suite (not -security).
    awk -v suite="$suite" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") {
          split(uris, u, " "); print u[1]; found = 1; exit
        }
        types = ""; suites = ""; uris = ""
      }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      tolower($1) == "types:"  { $1 = ""; types = $0 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      tolower($1) == "uris:"   { $1 = ""; uris = $0 }
      END { if (!found) flush() }
    ' "$f" | head -n1
  done | head -n1 | sed 's/^ *//'
  if [ -r /etc/apt/sources.list ]; then
    # "deb [options] URL suite components..."
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' /etc/apt/sources.list |
      awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }'
  fi
}

if [ -x "$dir/usr/bin/true" ] && [ -e "$dir/etc/debian_version" ]; then
  echo "rootfs: reusing $dir (Debian $(cat "$dir/etc/debian_version"))"
  exit 0
fi

mirror=${BENCH_MIRROR:-$(find_mirror 2>/dev/null | sed -n 1p || true)}
if [ -z "$mirror" ]; then
  echo "rootfs: no apt mirror for '$suite' found in /etc/apt/sources.list{,.d/*.sources}; set BENCH_MIRROR" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "rootfs: debootstrap is not installed" >&2; exit 1; }

partial="$dir.partial"
rm -rf "$partial"
mkdir -p "$(dirname "$dir")"
echo "rootfs: debootstrap --variant=minbase $suite from $mirror into $dir (first run only; a minute or two)"
start=$(date +%s)
# debootstrap's own I: lines are the progress report; keep them, prefixed.
if ! debootstrap --variant=minbase "$suite" "$partial" "$mirror" 2>&1 |
     sed -u 's/^/rootfs:   /'; then
  echo "rootfs: debootstrap failed; see $partial/debootstrap/debootstrap.log" >&2
  exit 1
fi
# apt's package cache is 30+ MB of .debs no runtime needs.
rm -rf "$partial"/var/cache/apt/archives/*.deb
mv "$partial" "$dir"
echo "rootfs: ready in $(( $(date +%s) - start )) s: $(du -sh "$dir" | cut -f1) at $dir"
