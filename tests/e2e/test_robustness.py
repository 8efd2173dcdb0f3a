"""moatd stays bounded against clients that leave and workloads that write
in tiny pieces."""

import socket
import time

from moatd_harness import vmrss_kib


def test_abandoned_waits_release_their_connections(moatd, sandbox):
    before = moatd.settled_fd_count()
    request = (f"POST /v1/sandboxes/{sandbox.id}/wait HTTP/1.1\r\nHost: x\r\n"
               "Content-Length: 0\r\n\r\n").encode()
    for _ in range(10):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(moatd.socket)
        s.sendall(request)
        time.sleep(0.05)
        s.close()
    after = moatd.settled_fd_count(target=before, wait=5.0)
    assert after <= before, "moatd kept %d fds of abandoned waits" % (after - before)


def test_tiny_alternating_frames_keep_memory_bounded(moatd, sandbox):
    before = vmrss_kib(moatd.pid)
    p = sandbox.exec("python3", "-c",
                     "import os\n"
                     "for _ in range(250000):\n"
                     "    os.write(1, b'a'); os.write(2, b'b')\n",
                     stdin=False)
    time.sleep(4)  # nobody reads: it fills what credit allows, then blocks
    grown = vmrss_kib(moatd.pid) - before
    p.kill()
    assert grown < 8 * 1024, "moatd grew by %d KiB for unread 1-byte frames" % grown


def test_unknown_methods_get_json_405(moatd):
    status, headers, body = moatd.raw(b"PATCH /v1/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status == 405, (status, body)
    assert b'"method_not_allowed"' in body
