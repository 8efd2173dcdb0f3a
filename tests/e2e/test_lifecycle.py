"""Sandbox ends that are not a client's DELETE: init killed from the host, and
moatd itself killed and restarted. Nothing may be left behind either way."""

import os
import signal
import time

import pytest

import moatd_harness
from moatd_harness import moat


def init_pid_of(moatd, sandbox_id):
    """The host pid of the sandbox's init: a descendant of moatd running moat-init."""
    for pid in moatd_harness.descendants(moatd.pid):
        argv = moatd_harness.cmdline(pid)
        if argv and argv[0] == b"moat-init":
            uid = moatd_harness.real_uid(pid)
            if uid is not None and uid >= moatd_harness.SANDBOX_UID_MIN:
                yield pid


def test_killed_init_stops_the_sandbox_and_is_torn_down(moatd):
    sb = moat.Sandbox.create(socket=moatd.socket)
    before = set(init_pid_of(moatd, sb.id))
    assert before, "no moat-init found under moatd"
    sb2 = moat.Sandbox.create(socket=moatd.socket)
    mine = set(init_pid_of(moatd, sb2.id)) - before
    assert len(mine) == 1
    os.kill(mine.pop(), signal.SIGKILL)
    sb2.wait(timeout=10)
    assert sb2.state == "stopped" and sb2.end_reason == "error"
    with pytest.raises(moat.SandboxNotRunning):
        sb2.exec("true")
    # The other sandbox is untouched.
    assert sb.run("echo alive").stdout == "alive\n"
    sb2.terminate()
    sb.terminate()


def test_moatd_sigkill_then_restart_reaps_everything(moatd):
    sb = moat.Sandbox.create(socket=moatd.socket, tags={"survivor": "no"})
    sb.exec("sleep", "1000")
    inits = list(init_pid_of(moatd, sb.id))
    assert inits
    moatd.proc.kill()
    moatd.proc.wait()
    # init and its children outlive moatd (nothing kills them yet) ...
    assert any(os.path.exists("/proc/%d" % p) for p in inits)
    moatd.restart()
    # ... until the new moatd reaps what the old one left: processes, cgroups, socket.
    for pid in inits:
        deadline = time.monotonic() + 5
        while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.exists("/proc/%d" % pid), "init %d survived the restart" % pid
    stale = moat.Sandbox.from_id(sb.id, socket=moatd.socket)
    assert stale.state == "stopped" and stale.end_reason == "error"
    assert not moatd._cgroup_problems()
    stale.terminate()
    # The restarted daemon works, and its fd baseline is its own.
    with moat.Sandbox.create(socket=moatd.socket) as fresh:
        assert fresh.run("echo again").stdout == "again\n"
    for info in moatd.client().request("GET", "/v1/sandboxes")["sandboxes"]:
        moatd.client().request("DELETE", "/v1/sandboxes/%s" % info["id"])
    moatd.fd_baseline = moatd.settled_fd_count()


def test_a_create_whose_client_hung_up_is_deleted(moatd):
    """Ctrl-C during `moat run`'s create, or a client-side timeout: the client
    never learnt the id, so moatd must not keep the sandbox alive."""
    import json
    import socket as sockets
    body = json.dumps({"tags": {"abandoned": "yes"}}).encode()
    s = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    s.connect(moatd.socket)
    s.sendall(b"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    s.close()
    deadline = time.monotonic() + 10
    while "its creator hung up" not in moatd.log():
        assert time.monotonic() < deadline, "moatd never noticed the hang-up:\n" + moatd.log()
        time.sleep(0.02)
    while True:
        left = moat.Sandbox.list(tags={"abandoned": "yes"}, socket=moatd.socket)
        if not left:
            break
        assert time.monotonic() < deadline, "abandoned sandbox still listed: %s" % left
        time.sleep(0.05)
    assert not moatd._cgroup_problems()
