"""200 create/exec/delete cycles leave nothing behind."""

import os

import moat

from moatd_harness import SANDBOX_UID_MIN, descendants, mount_points, real_uid, subdirs

CYCLES = 200


def test_create_exec_delete_cycles_leak_nothing(moatd):
    for i in range(CYCLES):
        sb = moat.Sandbox.create(socket=moatd.socket, tags={"cycle": str(i)})
        p = sb.exec("sh", "-c", "echo $0", str(i), stdin=False)
        assert p.stdout.read() == "%d\n" % i
        assert p.wait(timeout=30) == 0
        sb.terminate()
    assert moatd.client().request("GET", "/v1/sandboxes") == {"sandboxes": []}
    fds = moatd.settled_fd_count(target=moatd.fd_baseline)
    assert fds <= moatd.fd_baseline, "moatd fds %d > baseline %d" % (fds, moatd.fd_baseline)
    for moat_dir in moatd.moat_dirs():
        assert subdirs(moat_dir) == [], moat_dir
    assert [m for m in mount_points("self") if m.startswith(moatd.tmp)] == []
    assert [m for m in mount_points(moatd.pid) if m.startswith(moatd.tmp)] == []
    assert [p for p in descendants(moatd.pid) if (real_uid(p) or 0) >= SANDBOX_UID_MIN] == []
    sockets = [n for n in os.listdir(os.path.join(moatd.run_dir, "sandboxes"))] \
        if os.path.isdir(os.path.join(moatd.run_dir, "sandboxes")) else []
    assert sockets == []
