#!/usr/bin/python3
"""Image benchmarks against a running moatd (bench/run.sh starts one):

  create   sandbox create time (POST /v1/sandboxes only) from a 5-layer image
           vs the host image, interleaved, N each
  rebuild  an unchanged 5-step build spec rebuilt (every step a cache hit), N times
  snapshot a sandbox with 10 MiB of changes snapshotted, N times (a new
           sandbox each time)

Prints a table; --json writes the numbers for bench/report.py."""

import argparse
import base64
import http.client
import io
import json
import os
import socket
import statistics
import sys
import tarfile
import time


class Connection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=600)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.socket_path)


class Api:
    def __init__(self, path):
        self.path = path

    def call(self, method, route, body=None, ndjson=False):
        connection = Connection(self.path)
        try:
            connection.request(method, route, body=None if body is None else json.dumps(body))
            response = connection.getresponse()
            data = response.read().decode()
        finally:
            connection.close()
        if ndjson:
            events = [json.loads(line) for line in data.splitlines() if line.strip()]
            if response.status != 200 or "error" in events[-1]:
                raise RuntimeError("%s %s: %s" % (method, route, data[-500:]))
            return events
        if response.status >= 300:
            raise RuntimeError("%s %s: %d %s" % (method, route, response.status, data[:500]))
        return json.loads(data) if data else {}


def summary(samples):
    ordered = sorted(samples)
    return {"n": len(ordered), "min_ms": ordered[0], "median_ms": statistics.median(ordered),
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def five_step_spec(name):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"bench context\n"
        info = tarfile.TarInfo("file.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return {"name": name, "from": "host", "context": base64.b64encode(buf.getvalue()).decode(),
            "steps": [{"env": {"BENCH": "1"}}, {"run": "mkdir -p /opt/one && echo 1 > /opt/one/f"},
                      {"copy": {"src": "file.txt", "dest": "/opt/file.txt"}},
                      {"run": "mkdir -p /opt/two && echo 2 > /opt/two/f"}, {"workdir": "/opt"}]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True)
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    api = Api(args.socket)
    results = {}

    # A 5-layer image: a build whose every step makes a layer (host + 4 + workdir config).
    spec = five_step_spec("bench-layers")
    spec["steps"][0] = {"run": "mkdir -p /opt/zero"}
    spec["steps"][4] = {"run": "mkdir -p /opt/three"}
    api.call("POST", "/v1/images/build", spec, ndjson=True)
    layers = len(api.call("GET", "/v1/images/bench-layers")["layers"])

    timings = {"host": [], "layers": []}
    for i in range(args.n + 2):
        for image, key in (("host", "host"), ("bench-layers", "layers")):
            started = time.perf_counter()
            sandbox = api.call("POST", "/v1/sandboxes", {"image": image})
            elapsed = (time.perf_counter() - started) * 1e3
            api.call("DELETE", "/v1/sandboxes/" + sandbox["id"])
            if i >= 2:
                timings[key].append(elapsed)
    results["create"] = {"host": summary(timings["host"]), "layers": summary(timings["layers"]),
                         "layer_count": layers}

    spec = five_step_spec("bench-rebuild")
    api.call("POST", "/v1/images/build", spec, ndjson=True)
    rebuild = []
    for _ in range(args.n):
        started = time.perf_counter()
        events = api.call("POST", "/v1/images/build", spec, ndjson=True)
        rebuild.append((time.perf_counter() - started) * 1e3)
        assert all(e.get("cached", True) for e in events if "kind" in e), events
    results["rebuild"] = summary(rebuild)

    snapshot, reported = [], []
    for i in range(max(5, args.n // 5)):
        sandbox = api.call("POST", "/v1/sandboxes", {"image": "host", "memory": 256})
        try:
            api.call("POST", "/v1/sandboxes/%s/run" % sandbox["id"],
                     {"cmd": "head -c 10485760 /dev/urandom > /root/ten && mkdir -p /opt/x && touch /opt/x/y"})
            started = time.perf_counter()
            image = api.call("POST", "/v1/sandboxes/%s/snapshot" % sandbox["id"], {})
            snapshot.append((time.perf_counter() - started) * 1e3)
            reported.append(image["snapshot_ms"])
            api.call("DELETE", "/v1/images/" + image["id"])
        finally:
            api.call("DELETE", "/v1/sandboxes/" + sandbox["id"])
    results["snapshot"] = summary(snapshot)
    results["snapshot"]["moatd_median_ms"] = statistics.median(reported)
    for name in ("bench-layers", "bench-rebuild"):
        api.call("DELETE", "/v1/images/" + name)
    api.call("POST", "/v1/images/prune", {})

    c = results["create"]
    print("image bench  N=%d" % args.n)
    print("  %-34s %8s %8s %8s" % ("", "min", "median", "p99"))
    print("  %-34s %8.2f %8.2f %8.2f" % ("create from host image (ms)", c["host"]["min_ms"], c["host"]["median_ms"],
                                         c["host"]["p99_ms"]))
    print("  %-34s %8.2f %8.2f %8.2f" % ("create from %d-layer image (ms)" % layers, c["layers"]["min_ms"],
                                         c["layers"]["median_ms"], c["layers"]["p99_ms"]))
    r = results["rebuild"]
    print("  %-34s %8.2f %8.2f %8.2f" % ("rebuild unchanged 5-step spec (ms)", r["min_ms"], r["median_ms"], r["p99_ms"]))
    s = results["snapshot"]
    print("  %-34s %8.2f %8.2f %8.2f" % ("snapshot, 10 MiB changed (ms)", s["min_ms"], s["median_ms"], s["p99_ms"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
