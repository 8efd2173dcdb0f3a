"""Shared tools of the adversarial suite.

- `responsive(moatd)`: measures moatd's health-check latency while an attack
  runs, and asserts it stayed within a bound (every attack must leave the
  daemon serving its other clients).
- `install(sb, name)`: copies one of the static probe programs built by
  tests/security/meson.build into a sandbox and returns its path there.
"""

import contextlib
import os
import statistics
import threading
import time

import moatd_harness

moat = moatd_harness.moat

# Health-check latency moatd must keep while one sandbox attacks it. Generous
# (2 cores, other tests and sanitizers running): a daemon that blocks its
# event loop on a sandbox shows up as seconds, not milliseconds.
HEALTH_P99_MAX_MS = 500.0
HEALTH_MAX_MS = 2000.0


def binary(name):
    """Path of a probe program built by tests/security/meson.build."""
    return os.path.join(moatd_harness.build_dir(), "tests", "security", name)


def install(sb, name, path=None):
    """Upload probe program `name` into sandbox `sb` (mode 0755) and return
    the path inside the sandbox."""
    path = path or "/tmp/" + name
    with open(binary(name), "rb") as f:
        sb.files.write(path, f.read(), mode=0o755)
    return path


class HealthSamples:
    def __init__(self):
        self.latencies_ms = []
        self.failures = []

    def summary(self):
        if not self.latencies_ms:
            return "no samples"
        ordered = sorted(self.latencies_ms)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return "health n=%d median=%.1fms p99=%.1fms max=%.1fms failures=%d" % (
            len(ordered), statistics.median(ordered), p99, ordered[-1], len(self.failures))

    def p99(self):
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0

    def check(self, p99_max_ms=HEALTH_P99_MAX_MS, max_ms=HEALTH_MAX_MS):
        assert self.latencies_ms, "no health check completed during the attack"
        assert not self.failures, "health checks failed during the attack: %s (%s)" % (
            self.failures[:3], self.summary())
        assert self.p99() <= p99_max_ms, "moatd slowed down under attack: " + self.summary()
        assert max(self.latencies_ms) <= max_ms, "moatd stalled under attack: " + self.summary()


@contextlib.contextmanager
def responsive(moatd, interval=0.05, p99_max_ms=HEALTH_P99_MAX_MS, max_ms=HEALTH_MAX_MS, check=True):
    """Poll GET /v1/health every `interval` s on a thread for the duration of
    the block; on exit, print the latency summary and assert the bounds."""
    samples = HealthSamples()
    stop = threading.Event()

    def poll():
        client = moat.Client(moatd.socket, timeout=10)
        while not stop.is_set():
            start = time.monotonic()
            try:
                client.request("GET", "/v1/health")
                samples.latencies_ms.append((time.monotonic() - start) * 1000)
            except Exception as e:  # noqa: BLE001 - any failure is a finding
                samples.failures.append(repr(e))
            stop.wait(interval)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(15)
    print(samples.summary())
    if check:
        samples.check(p99_max_ms, max_ms)
