#!/usr/bin/python3
"""Network benchmark for a running moatd: what a sandbox's network costs.

    net_bench.py --socket PATH --netperf PATH [-n N] [--seconds S] [--json OUT]

(a) create time: N x (create + delete) for each network mode (none, allow
    ["198.18.77.2/32"], internet), only the POST /v1/sandboxes call on the
    clock. Modes are interleaved, and the order rotates every iteration, so
    drift on the host (page cache, other load, moatd's own growth) lands on
    every mode alike instead of on whichever ran last.

(b) TCP throughput over a veth: a network namespace "moatb-<pid>" of our own
    (198.18.77.1/24 on the host side, 198.18.77.2/24 inside) runs
    `netperf server`; then, --repeats times, alternately:
      host -> netns        the floor: the same veth path with no moat at all
      sandbox -> netns     an allow-mode sandbox allowing 198.18.77.2/32
    plus "sandbox loopback" (client and server on 127.0.0.1 inside one
    sandbox), which works in every mode and so also tests the push-in path
    on a moatd without networking.

netperf must be a static binary (gcc -static -O2 bench/netperf.c): it is sent
into the sandbox over exec stdin and run there, where the host's libraries
may not be. 198.18.0.0/15 is the range set aside for benchmarks (RFC 2544),
so it collides with no real network.

Everything created (sandboxes, the netns and its veth, server processes) is
removed on every path: normal end, an exception, SIGINT/SIGTERM.

Run as root with /usr/bin/python3 (stdlib and the repo's SDK only). Exits 0
when every measurement ran or was skipped for a stated reason (e.g. this
moatd does not take a "network" field yet), 1 when one failed, 2 on usage.
"""

import argparse
import atexit
import json
import math
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))
import moat  # noqa: E402  (the repo's SDK, found through the path above)

NETNS_PREFIX = "moatb-"
HOST_ADDRESS = "198.18.77.1"
NETNS_ADDRESS = "198.18.77.2"
SERVER_PORT = 5201
LOOPBACK_PORT = 5202
MODES = ("none", "allow", "internet")
NETWORK_BODIES = {
    "none": {"mode": "none"},
    "allow": {"mode": "allow", "allow": [NETNS_ADDRESS + "/32"]},
    "internet": {"mode": "internet"},
}
# Where netperf lands inside a sandbox.
SANDBOX_NETPERF = "/tmp/netperf"
# How long a server has to say it is listening.
SERVER_READY_TIMEOUT = 10.0


def log(message):
    print("net_bench: " + message, file=sys.stderr, flush=True)


# --- cleanup -----------------------------------------------------------------------

class Cleanup:
    """Undo actions, run newest first, once, from finally, atexit or a signal.

    One registry instead of nested try blocks, so a failure half way through
    set-up still removes exactly what was made, and a SIGTERM from a harness
    does not leave a netns or a sandbox behind.
    """

    def __init__(self):
        self._actions = []

    def push(self, description, action):
        entry = (description, action)
        self._actions.append(entry)
        return entry

    def run_one(self, entry):
        """Run one action now (and forget it), e.g. a sandbox done with early."""
        if entry in self._actions:
            self._actions.remove(entry)
            self._run(entry)

    @staticmethod
    def _run(entry):
        description, action = entry
        try:
            action()
        except Exception as exc:  # cleanup goes on past one failure
            log("cleanup: %s failed: %s" % (description, exc))

    def run_all(self):
        while self._actions:
            self._run(self._actions.pop())


cleanup = Cleanup()
atexit.register(cleanup.run_all)


def _exit_on_signal(signum, frame):
    # SystemExit unwinds through every finally, then atexit runs the rest.
    raise SystemExit(128 + signum)


# --- statistics ----------------------------------------------------------------------

def summarize_ms(samples_ns):
    s = sorted(samples_ns)
    return {
        "n": len(s),
        "min_ms": s[0] / 1e6,
        "median_ms": statistics.median(s) / 1e6,
        # Nearest-rank p99, as bench/report.py: with N < 100 it is the maximum.
        "p99_ms": s[max(0, math.ceil(0.99 * len(s)) - 1)] / 1e6,
        "mean_ms": statistics.fmean(s) / 1e6,
        "samples_ms": [round(x / 1e6, 4) for x in samples_ns],
    }


# --- (a) create time ----------------------------------------------------------------

class Unsupported(Exception):
    """moatd refused the network field itself: not a failure of the bench."""


# Set when moatd refuses the "network" field even for mode none: then "none"
# is measured as a create without the field, which the API defines as none.
notes = []
_network_field_refused = False


def create_sandbox(client, mode, image, timeout=None, cpu=None):
    """POST /v1/sandboxes with a network mode; returns (doc, elapsed_ns)."""
    global _network_field_refused
    if mode == "none" and _network_field_refused:
        body = {"image": image}
    else:
        body = {"image": image, "network": NETWORK_BODIES[mode]}
    if timeout is not None:
        body["timeout"] = timeout
    if cpu is not None:
        body["cpu"] = cpu
    start = time.perf_counter_ns()
    try:
        doc = client.request("POST", "/v1/sandboxes", json_body=body)
    except moat.InvalidArgument as exc:
        if mode == "none" and not _network_field_refused:
            _network_field_refused = True
            notes.append("moatd refused {\"network\": {\"mode\": \"none\"}} (%s): mode none is "
                         "measured as a create without the field" % exc)
            log(notes[-1])
            return create_sandbox(client, mode, image, timeout, cpu)
        raise Unsupported("moatd refused network %s: %s" % (json.dumps(NETWORK_BODIES[mode]), exc)) from None
    elapsed = time.perf_counter_ns() - start
    applied = (doc.get("network") or {}).get("mode")
    if mode != "none" and applied != mode:
        # A moatd that parses the field but does not build the network yet:
        # timing it would measure nothing.
        delete_sandbox(client, doc["id"])
        raise Unsupported("moatd took network mode %s but the sandbox object says %s"
                          % (mode, json.dumps(doc.get("network"))))
    return doc, elapsed


def delete_sandbox(client, sandbox_id):
    try:
        client.request("DELETE", "/v1/sandboxes/%s" % sandbox_id)
    except moat.NotFound:
        pass


def created(client, doc):
    """Register a just-created sandbox for deletion; returns the cleanup entry."""
    sandbox_id = doc["id"]
    return cleanup.push("delete sandbox %s" % sandbox_id,
                        lambda: delete_sandbox(client, sandbox_id))


def bench_create(client, modes, iterations, image, warmup):
    """Returns {"modes": {mode: stats}, "skipped": {...}, "failed": {...}, ...}."""
    samples = {mode: [] for mode in modes}
    skipped, failed = {}, {}
    active = list(modes)
    log("create time: %d warm-up + %d timed iterations x %s" % (warmup, iterations, ", ".join(modes)))
    for i in range(warmup + iterations):
        # Rotate the order each iteration: no mode always follows another.
        order = active[i % len(active):] + active[:i % len(active)] if active else []
        for mode in order:
            try:
                doc, elapsed = create_sandbox(client, mode, image)
            except Unsupported as exc:
                skipped[mode] = str(exc)
                active.remove(mode)
                log("create: %s skipped: %s" % (mode, exc))
                continue
            except moat.Error as exc:
                failed[mode] = "%s: %s" % (type(exc).__name__, exc)
                active.remove(mode)
                log("create: %s FAILED: %s" % (mode, failed[mode]))
                continue
            cleanup.run_one(created(client, doc))
            if i >= warmup:
                samples[mode].append(elapsed)
    result = {"iterations": iterations, "warmup": warmup, "image": image, "modes": {},
              "median_delta_ms": {}, "skipped": skipped, "failed": failed}
    for mode in modes:
        if samples[mode]:
            result["modes"][mode] = summarize_ms(samples[mode])
    base = result["modes"].get("none")
    for mode in ("allow", "internet"):
        if base and mode in result["modes"]:
            result["median_delta_ms"][mode + "-none"] = (
                result["modes"][mode]["median_ms"] - base["median_ms"])
    return result


# --- (b) throughput -------------------------------------------------------------------

def run(argv, check=True):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv), done.returncode, done.stderr.strip()))
    return done


def make_netns():
    """The server's netns and its veth; returns the netns name."""
    name = "%s%d" % (NETNS_PREFIX, os.getpid())
    # Host-side interface: not under moatd's "moat" prefix, so moatd's
    # nftables rules (which match its own veths by name) never apply to it.
    host_link = "mbh%d" % os.getpid()
    run(["ip", "netns", "add", name])
    cleanup.push("delete netns " + name, lambda: run(["ip", "netns", "del", name]))
    run(["ip", "link", "add", host_link, "type", "veth", "peer", "name", "eth0", "netns", name])
    # Deleting the netns destroys the pair; this catches the case where
    # something still holds the netns open.
    cleanup.push("delete link " + host_link, lambda: run(["ip", "link", "del", host_link], check=False))
    run(["ip", "addr", "add", HOST_ADDRESS + "/24", "dev", host_link])
    run(["ip", "link", "set", host_link, "up"])
    run(["ip", "-n", name, "addr", "add", NETNS_ADDRESS + "/24", "dev", "eth0"])
    run(["ip", "-n", name, "link", "set", "eth0", "up"])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    # Replies to a sandbox go to its own address (moatd's pool), not to
    # 198.18.77.0/24: route everything back through the host.
    run(["ip", "-n", name, "route", "add", "default", "via", HOST_ADDRESS])
    return name


class PipeLines:
    """Lines from a child's pipe with a timeout. Reads the raw fd itself:
    select() on a buffered file object misses lines already in its buffer."""

    def __init__(self, pipe):
        self._fd = pipe.fileno()
        self._buffer = b""

    def readline(self, timeout):
        """The next line (str, without newline), or None at timeout or EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace")


def wait_for_line(lines, needle, timeout, what):
    """Read lines until one contains needle; raise after timeout or EOF."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        line = lines.readline(max(0.0, deadline - time.monotonic()))
        if line is None:
            break
        seen.append(line.strip())
        if needle in line:
            return
    raise RuntimeError("%s did not start: %s" % (what, " | ".join(seen) or "no output"))


def start_netns_server(netperf, netns):
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, netperf, "server", NETNS_ADDRESS, str(SERVER_PORT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stop():
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    cleanup.push("stop netperf server %d" % server.pid, stop)
    wait_for_line(PipeLines(server.stderr), "listening", SERVER_READY_TIMEOUT,
                  "netperf server in " + netns)
    server.reports = PipeLines(server.stdout)
    return server


def server_bytes(server):
    """Bytes the server read on the last connection, from its JSON line."""
    line = server.reports.readline(5.0)
    try:
        return json.loads(line)["bytes"]
    except (TypeError, ValueError, KeyError):
        return None


def parse_client_output(text, where):
    for line in reversed(text.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "gbit_per_s" in doc:
            return doc
    raise RuntimeError("netperf client %s printed no result: %r" % (where, text[-300:]))


def client_from_host(netperf, seconds):
    done = subprocess.run([netperf, "client", NETNS_ADDRESS, str(SERVER_PORT), str(seconds)],
                          capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError("host netperf client: exit %d: %s" % (done.returncode, done.stderr.strip()))
    return parse_client_output(done.stdout, "on the host")


def push_netperf(sandbox, netperf_bytes):
    """Send the static netperf into the sandbox over exec stdin."""
    p = sandbox.exec("sh", "-c", "cat > %s && chmod +x %s" % (SANDBOX_NETPERF, SANDBOX_NETPERF),
                     stdin=True, timeout=60)
    p.stdin.write(netperf_bytes)
    p.stdin.write_eof()
    code = p.wait()
    if code != 0:
        raise RuntimeError("copying netperf into sandbox %s: exit %s: %s"
                           % (sandbox.id, code, p.stderr.read().strip()))


def client_in_sandbox(sandbox, address, port, seconds):
    result = sandbox.run([SANDBOX_NETPERF, "client", address, str(port), str(seconds)],
                         timeout=int(seconds) + 60)
    if result.exit_code != 0:
        raise RuntimeError("netperf client in sandbox %s: exit %s: %s"
                           % (sandbox.id, result.exit_code, result.stderr.strip()))
    return parse_client_output(result.stdout, "in sandbox " + sandbox.id)


def open_sandbox(client, mode, image, seconds, repeats):
    """A sandbox for throughput runs; returns (sandbox, its cleanup entry).

    It gets every host core (the default is 1): the floor's client is not
    capped either, and the bench measures the network path, not the quota."""
    doc, _ = create_sandbox(client, mode, image, timeout=int(seconds * repeats * 2) + 300,
                            cpu=float(os.cpu_count()))
    entry = created(client, doc)
    return moat.Sandbox(client, doc), entry


def sandbox_loopback(client, image, netperf_bytes, seconds, repeats):
    """Server and client on 127.0.0.1 inside one mode-none sandbox."""
    sb, entry = open_sandbox(client, "none", image, seconds, repeats)
    try:
        push_netperf(sb, netperf_bytes)
        server = sb.exec(SANDBOX_NETPERF, "server", "127.0.0.1", str(LOOPBACK_PORT), stdin=False)
        line = server.stderr.readline()
        if "listening" not in line:
            raise RuntimeError("netperf server in sandbox %s did not start: %r" % (sb.id, line))
        return [client_in_sandbox(sb, "127.0.0.1", LOOPBACK_PORT, seconds) for _ in range(repeats)]
    finally:
        # Deleting the sandbox kills its server too.
        cleanup.run_one(entry)


def summarize_runs(runs):
    rates = [r["gbit_per_s"] for r in runs]
    return {"runs": runs, "gbit_per_s": rates, "median_gbit_per_s": statistics.median(rates),
            "max_gbit_per_s": max(rates)}


def bench_throughput(client, netperf, image, seconds, repeats):
    with open(netperf, "rb") as f:
        netperf_bytes = f.read()
    result = {"seconds": seconds, "repeats": repeats, "sandbox_cpu": float(os.cpu_count()),
              "paths": {}, "skipped": {}, "failed": {}}

    # Loopback inside a sandbox first: it needs no network support in moatd.
    log("throughput: sandbox loopback, %d x %ss" % (repeats, seconds))
    try:
        result["paths"]["sandbox_loopback"] = summarize_runs(
            sandbox_loopback(client, image, netperf_bytes, seconds, repeats))
    except Unsupported as exc:
        result["skipped"]["sandbox_loopback"] = str(exc)
    except (moat.Error, RuntimeError) as exc:
        result["failed"]["sandbox_loopback"] = str(exc)
        log("sandbox loopback FAILED: %s" % exc)

    netns = make_netns()
    server = start_netns_server(netperf, netns)
    sandbox = None
    try:
        sandbox, _ = open_sandbox(client, "allow", image, seconds, repeats)
        push_netperf(sandbox, netperf_bytes)
    except Unsupported as exc:
        result["skipped"]["sandbox_to_netns"] = str(exc)
        log("sandbox -> netns skipped: %s" % exc)
    except (moat.Error, RuntimeError) as exc:
        result["failed"]["sandbox_to_netns"] = str(exc)
        log("sandbox -> netns FAILED: %s" % exc)
        sandbox = None

    runs = {"host_to_netns": [], "sandbox_to_netns": []}
    for i in range(repeats):
        # Alternate, so both paths see the same host conditions.
        if "host_to_netns" not in result["failed"]:
            log("throughput: host -> netns %d/%d, %ss" % (i + 1, repeats, seconds))
            try:
                r = client_from_host(netperf, seconds)
                r["server_bytes"] = server_bytes(server)
                runs["host_to_netns"].append(r)
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                result["failed"]["host_to_netns"] = str(exc)
                log("host -> netns FAILED: %s" % exc)
        if sandbox is not None and "sandbox_to_netns" not in result["failed"]:
            log("throughput: sandbox -> netns %d/%d, %ss" % (i + 1, repeats, seconds))
            try:
                r = client_in_sandbox(sandbox, NETNS_ADDRESS, SERVER_PORT, seconds)
                r["server_bytes"] = server_bytes(server)
                runs["sandbox_to_netns"].append(r)
            except (moat.Error, RuntimeError) as exc:
                result["failed"]["sandbox_to_netns"] = str(exc)
                log("sandbox -> netns FAILED: %s" % exc)
    for path, path_runs in runs.items():
        if path_runs:
            result["paths"][path] = summarize_runs(path_runs)
    floor = result["paths"].get("host_to_netns")
    through = result["paths"].get("sandbox_to_netns")
    if floor and through:
        result["sandbox_vs_floor"] = through["median_gbit_per_s"] / floor["median_gbit_per_s"]
    return result


# --- output ---------------------------------------------------------------------------

def table(report):
    out = ["moat network bench  %s  kernel %s  %d cores  load %s" % (
        report["time"], report["kernel"], report["cpus"], report["load_start"])]
    create = report.get("create")
    if create:
        out.append("")
        out.append("sandbox create (POST /v1/sandboxes only), N=%d, ms" % create["iterations"])
        out.append("  %-30s %8s %8s %8s" % ("", "min", "median", "p99"))
        for mode in MODES:
            label = "network " + mode + (" [%s/32]" % NETNS_ADDRESS if mode == "allow" else "")
            if mode in create["modes"]:
                s = create["modes"][mode]
                out.append("  %-30s %8.2f %8.2f %8.2f" % (label, s["min_ms"], s["median_ms"], s["p99_ms"]))
            elif mode in create["failed"]:
                out.append("  %-30s FAILED: %s" % (label, create["failed"][mode]))
            elif mode in create["skipped"]:
                out.append("  %-30s skipped: %s" % (label, create["skipped"][mode]))
        for key, value in create["median_delta_ms"].items():
            out.append("  median %-23s %+8.2f ms" % (key, value))
    tput = report.get("throughput")
    if tput:
        out.append("")
        out.append("TCP throughput, one stream, %ss x %d, Gbit/s" % (tput["seconds"], tput["repeats"]))
        out.append("  %-30s %8s %8s" % ("", "median", "max"))
        labels = [("host_to_netns", "host -> netns (floor)"),
                  ("sandbox_to_netns", "sandbox (allow) -> netns"),
                  ("sandbox_loopback", "sandbox loopback")]
        for key, label in labels:
            if key in tput["paths"]:
                p = tput["paths"][key]
                out.append("  %-30s %8.2f %8.2f" % (label, p["median_gbit_per_s"], p["max_gbit_per_s"]))
            elif key in tput["failed"]:
                out.append("  %-30s FAILED: %s" % (label, tput["failed"][key]))
            elif key in tput["skipped"]:
                out.append("  %-30s skipped: %s" % (label, tput["skipped"][key]))
        if "sandbox_vs_floor" in tput:
            out.append("  sandbox / floor                %8.0f %%" % (100 * tput["sandbox_vs_floor"]))
    for note in report.get("notes", []):
        out.append("note: " + note)
    for section in ("create", "throughput"):
        if report.get(section + "_error"):
            out.append("%s: FAILED: %s" % (section, report[section + "_error"]))
    return "\n".join(out)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="unix socket of a running moatd")
    parser.add_argument("--netperf", required=True, help="static netperf binary (bench/netperf.c)")
    parser.add_argument("-n", type=int, default=50, help="create iterations per mode (default 50)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one throughput run")
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs per path (default 2)")
    parser.add_argument("--image", default="host", help="image for the sandboxes (default host)")
    parser.add_argument("--only", choices=("create", "throughput"), help="run one part")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = parser.parse_args(argv)
    if args.n < 1 or args.warmup < 0 or args.repeats < 1 or not 0 < args.seconds <= 3600:
        parser.error("need -n >= 1, --warmup >= 0, --repeats >= 1, 0 < --seconds <= 3600")
    if not os.access(args.netperf, os.X_OK):
        parser.error("--netperf %s is not an executable file" % args.netperf)
    return args


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("must run as root (it makes a network namespace)")
        return 2
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    client = moat.Client(args.socket, timeout=args.seconds * args.repeats + 120)
    try:
        moat.health(args.socket)
    except moat.Error as exc:
        log(str(exc))
        return 1
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])
    report = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "kernel": platform.release(),
              "cpus": os.cpu_count(), "load_start": load_start}
    report["notes"] = notes
    failed = False
    try:
        if args.only in (None, "create"):
            try:
                report["create"] = bench_create(client, MODES, args.n, args.image, args.warmup)
                failed |= bool(report["create"]["failed"])
            except (moat.Error, RuntimeError) as exc:
                report["create_error"] = str(exc)
                failed = True
            cleanup.run_all()
        if args.only in (None, "throughput"):
            try:
                report["throughput"] = bench_throughput(client, args.netperf, args.image,
                                                        args.seconds, args.repeats)
                failed |= bool(report["throughput"]["failed"])
            except (moat.Error, RuntimeError, subprocess.SubprocessError, OSError) as exc:
                report["throughput_error"] = str(exc)
                failed = True
    finally:
        cleanup.run_all()
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
