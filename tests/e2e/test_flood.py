"""1 GiB on stdout is delivered whole while moatd's memory stays bounded."""

import threading
import time

import moat

from moatd_harness import vmrss_kib

GIB = 1 << 30
RSS_LIMIT_KIB = 100 * 1024


def test_one_gib_of_stdout_is_delivered_with_bounded_daemon_memory(moatd):
    samples = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append(vmrss_kib(moatd.pid))
            time.sleep(0.1)

    with moat.Sandbox.create(socket=moatd.socket) as sb:
        p = sb.exec("head", "-c", str(GIB), "/dev/zero", stdin=False, text=False)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        received = 0
        nonzero = False
        start = time.monotonic()
        try:
            for chunk in p.stdout.chunks():
                received += len(chunk)
                if not nonzero and chunk.count(0) != len(chunk):
                    nonzero = True
        finally:
            done.set()
            sampler.join()
        elapsed = time.monotonic() - start
        assert p.wait(timeout=60) == 0
        assert p.stderr.read() == b""
    assert received == GIB, "got %d bytes of %d in %.1fs" % (received, GIB, elapsed)
    assert not nonzero, "bytes other than zero arrived"
    assert len(samples) >= 5, "stream too short to sample (%d samples)" % len(samples)
    assert max(samples) < RSS_LIMIT_KIB, "moatd VmRSS peaked at %d KiB" % max(samples)
