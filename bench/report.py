#!/usr/bin/python3
"""Print the benchmark table from the samples the runners left in a results dir.

    report.py RESULTS_DIR N

Each measurement NAME is either RESULTS_DIR/NAME.ns (one wall-time sample in
nanoseconds a line) or RESULTS_DIR/NAME.skip (why there is no number). moat's
throughput is RESULTS_DIR/moat_throughput.txt ("key value" lines).
"""
import math
import json
import os
import platform
import statistics
import sys
import time

STARTUP = [
    ("moat_total", "moat  create+run+delete"),
    ("bwrap", "bwrap --unshare-all"),
    ("crun", "crun run"),
    ("runc", "runc run"),
    ("runsc", "runsc run (ptrace)"),
]
FLOORS = [
    ("floor_fork_exec", "fork+exec+wait /bin/true"),
    ("floor_clone7_exec", "clone 7 ns+exec+wait"),
]
EXECS = [
    ("moat_exec_run", "POST /run"),
    ("moat_exec_stream", "POST /execs + GET output"),
]
PHASES = [("moat_create", "create"), ("moat_run", "run"), ("moat_delete", "delete")]


class Stats:
    def __init__(self, samples_ns):
        s = sorted(samples_ns)
        self.n = len(s)
        self.min = s[0] / 1e6
        self.median = statistics.median(s) / 1e6
        # Nearest-rank p99: the smallest sample with 99% of samples at or below it.
        self.p99 = s[max(0, math.ceil(0.99 * len(s)) - 1)] / 1e6


def load(results, name):
    """Returns Stats, or the reason string there are none."""
    path = os.path.join(results, name + ".ns")
    if os.path.exists(path):
        with open(path) as f:
            samples = [int(line) for line in f if line.strip()]
        if samples:
            return Stats(samples)
        return "no samples"
    try:
        with open(os.path.join(results, name + ".skip")) as f:
            return f.read().strip() or "skipped"
    except FileNotFoundError:
        return "not run"


def row(label, value, extra=""):
    if isinstance(value, str):
        return f"  {label:<28} skipped: {value}"
    return f"  {label:<28} {value.min:8.2f} {value.median:8.2f} {value.p99:8.2f}{extra}"


def image_section(results):
    """Create from a layered image vs host, rebuild, snapshot, from image_bench.py's JSON."""
    path = os.path.join(results, "image.json")
    if not os.path.exists(path):
        return ["moat images: skipped (no image.json)"]
    with open(path) as f:
        image = json.load(f)
    out = ["images (ms)", f"  {'':<34} {'min':>8} {'median':>8} {'p99':>8}"]
    rows = [("create from host image", image["create"]["host"]),
            (f"create from {image['create']['layer_count']}-layer image", image["create"]["layers"]),
            ("rebuild unchanged 5-step spec", image["rebuild"]),
            ("snapshot, 10 MiB changed", image["snapshot"])]
    for label, r in rows:
        out.append(f"  {label:<34} {r['min_ms']:8.2f} {r['median_ms']:8.2f} {r['p99_ms']:8.2f}")
    return out


def files_section(results):
    """Upload/download throughput, small files, listing, from files_bench.py's JSON."""
    path = os.path.join(results, "files.json")
    if not os.path.exists(path):
        return ["moat files: skipped (no files.json)"]
    with open(path) as f:
        files = json.load(f)
    return ["files (through the API, Python SDK client)",
            f"  256 MiB upload                 {files['upload_mb_per_s']:8.0f} MB/s",
            f"  256 MiB download               {files['download_mb_per_s']:8.0f} MB/s",
            f"  1,000 x 1 KiB files up (tar)   {files['small_upload_s']:8.3f} s",
            f"  1,000 x 1 KiB files down (tar) {files['small_download_s']:8.3f} s",
            f"  list a 10,000-entry directory  {files['list_10000_s']:8.3f} s"]


def network_section(results):
    """Create time per network mode and veth throughput, from net_bench.py's JSON."""
    path = os.path.join(results, "net.json")
    if not os.path.exists(path):
        return ["moat network: skipped (no net.json)"]
    with open(path) as f:
        net = json.load(f)
    out = ["sandbox create by network mode, POST /v1/sandboxes only (ms)",
           f"  {'':<28} {'min':>8} {'median':>8} {'p99':>8}"]
    modes = net.get("create", {}).get("modes", {})
    for mode, m in modes.items():
        out.append(f"  {'network ' + mode:<28} {m['min_ms']:8.2f} {m['median_ms']:8.2f} {m['p99_ms']:8.2f}")
    if "none" in modes:
        for mode in ("allow", "internet"):
            if mode in modes:
                out.append(f"  median {mode} - none: {modes[mode]['median_ms'] - modes['none']['median_ms']:+.2f} ms")
    paths = net.get("throughput", {}).get("paths", {})
    if paths:
        out.append("TCP throughput, one stream (Gbit/s, median of runs)")
        for name, p in paths.items():
            out.append(f"  {name:<28} {p['median_gbit_per_s']:8.2f}")
    for reason in net.get("skipped", []) if isinstance(net.get("skipped"), list) else []:
        out.append(f"  skipped: {reason}")
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: report.py RESULTS_DIR N", file=sys.stderr)
        return 2
    results, n = sys.argv[1], sys.argv[2]
    out = []
    out.append(f"moat bench  {time.strftime('%Y-%m-%d %H:%M:%S')}  N={n}  "
               f"kernel {platform.release()}  {os.cpu_count()} cores")
    out.append("rootfs: Debian bookworm minbase (the same tree for every runtime)")
    meta = {}
    try:
        with open(os.path.join(results, "meta.txt")) as f:
            meta = dict(line.rstrip("\n").split(None, 1) for line in f if line.strip())
    except FileNotFoundError:
        pass
    if meta:
        out.append(f"load average (1/5/15 min): {meta.get('load_start', '?')} at start, "
                   f"{meta.get('load_end', '?')} at end (other work on the host inflates medians)")
    out.append("")

    header = f"  {'':<28} {'min':>8} {'median':>8} {'p99':>8}"
    out.append("start a fresh sandbox running `true`, tear it down (ms)")
    out.append(header + "  median/moat")
    moat = load(results, "moat_total")
    for name, label in STARTUP:
        value = load(results, name)
        extra = ""
        if not isinstance(value, str) and not isinstance(moat, str):
            extra = f"  {value.median / moat.median:10.2f}x"
        out.append(row(label, value, extra))
    if not isinstance(moat, str):
        phases = [(label, load(results, name)) for name, label in PHASES]
        out.append("  moat phases, median: " + "  ".join(
            f"{label} {v.median:.2f}" if not isinstance(v, str) else f"{label} -"
            for label, v in phases))
    out.append("")

    out.append("floors, in-process (ms)")
    out.append(header)
    floors = {name: load(results, name) for name, _ in FLOORS}
    for name, label in FLOORS:
        out.append(row(label, floors[name]))
    out.append("")

    fork_exec = floors["floor_fork_exec"]
    out.append("exec `true` in one running moat sandbox (ms)")
    out.append(header + "  median - fork+exec floor")
    for name, label in EXECS:
        value = load(results, name)
        extra = ""
        if not isinstance(value, str) and not isinstance(fork_exec, str):
            extra = f"  {value.median - fork_exec.median:+10.2f}"
        out.append(row(label, value, extra))
    out.append("")

    path = os.path.join(results, "moat_throughput.txt")
    if os.path.exists(path):
        with open(path) as f:
            t = dict(line.split(None, 1) for line in f if line.strip())
        out.append(f"moat throughput: {float(t['per_second']):.1f} sandboxes/s created, run and "
                   f"deleted ({t['completed'].strip()} in {float(t['seconds']):.1f} s, "
                   f"{t['connections'].strip()} concurrent connections)")
    else:
        reason = load(results, "moat_throughput")
        out.append(f"moat throughput: skipped: {reason}")

    out.append("")
    out.extend(image_section(results))
    out.append("")
    out.extend(files_section(results))
    out.append("")
    out.extend(network_section(results))

    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
