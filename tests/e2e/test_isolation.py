"""What a sandbox can see and touch: pid, uts, user and mount namespaces,
read-only system paths, and the seccomp filter. Each test fails if that
layer of isolation is missing."""

import os
import socket
import time
import uuid

import pytest

from moatd_harness import SANDBOX_UID_MIN, all_pids, cmdline, descendants, proc_status


def run(sb, *argv, **kwargs):
    p = sb.exec(*argv, stdin=False, **kwargs)
    out, err = p.stdout.read(), p.stderr.read()
    return p.wait(timeout=60), out, err


def test_pid1_is_moat_init_and_host_processes_are_invisible(sandbox):
    code, out, err = run(sandbox, "python3", "-c",
                         "import os\n"
                         "print(open('/proc/1/cmdline','rb').read().split(b'\\0')[0].decode())\n"
                         "print(' '.join(sorted(p for p in os.listdir('/proc') if p.isdigit())))")
    assert code == 0, err
    first, pids = out.splitlines()
    assert "moat-init" in first
    visible = pids.split()
    assert str(os.getpid()) not in visible
    # init, the python and perhaps a helper: nothing of the host's hundreds.
    assert len(visible) <= 5, visible
    assert len(all_pids()) > len(visible)


def test_hostname_differs_from_host(sandbox):
    code, out, err = run(sandbox, "cat", "/proc/sys/kernel/hostname")
    assert code == 0, err
    assert out.strip() and out.strip() != socket.gethostname()


def test_root_inside_is_unprivileged_outside(moatd, sandbox):
    marker = "%d.%d" % (3000 + os.getpid() % 1000, time.time_ns() % 1000)
    p = sandbox.exec("sleep", marker, stdin=False)
    try:
        host_pid = None
        deadline = time.monotonic() + 10
        while host_pid is None and time.monotonic() < deadline:
            for pid in descendants(moatd.pid):
                if cmdline(pid)[:2] == [b"sleep", marker.encode()]:
                    host_pid = pid
            time.sleep(0.05)
        assert host_pid, "sandboxed sleep not found among moatd's descendants"
        status = proc_status(host_pid)
        uids = [int(u) for u in status["Uid"].split()]
        gids = [int(g) for g in status["Gid"].split()]
        assert min(uids) >= SANDBOX_UID_MIN, status["Uid"]
        assert min(gids) >= SANDBOX_UID_MIN, status["Gid"]
        # The pid the API reports is the pid inside the sandbox's namespace.
        assert int(status["NSpid"].split()[-1]) == p.pid
    finally:
        p.kill()
        p.wait(timeout=30)
    code, out, err = run(sandbox, "sh", "-c", "id -u; cat /proc/self/uid_map")
    assert code == 0, err
    lines = out.split("\n")
    assert lines[0] == "0"
    inside, outside, count = (int(x) for x in lines[1].split())
    assert inside == 0 and outside >= SANDBOX_UID_MIN and count <= 65536
    # A file only host root may write, not writable by sandbox root.
    code, out, err = run(sandbox, "sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
    assert code != 0


def test_rootfs_is_not_the_hosts(sandbox, tmp_path):
    marker = tmp_path / ("host-marker-%s" % uuid.uuid4().hex)
    marker.write_text("host")
    code, _, _ = run(sandbox, "test", "-e", str(marker))
    assert code != 0, "a host temp file is visible inside the sandbox"
    code, out, err = run(sandbox, "sh", "-c", "awk '$5 == \"/\" {print $0}' /proc/self/mountinfo")
    assert code == 0, err
    assert " - overlay " in out, out
    name = "/moat-e2e-%s" % uuid.uuid4().hex
    code, _, err = run(sandbox, "sh", "-c", "echo inside > %s && echo x > /etc%s" % (name, name))
    assert code == 0, "writing the sandbox's own root failed: %s" % err
    assert not os.path.exists(name)
    assert not os.path.exists("/etc" + name)


def test_system_paths_are_read_only(sandbox):
    code, _, _ = run(sandbox, "touch", "/usr/moat-e2e-x")
    assert code != 0
    assert not os.path.exists("/usr/moat-e2e-x")
    code, _, _ = run(sandbox, "sh", "-c", "echo moat > /proc/sys/kernel/domainname")
    assert code != 0
    code, _, _ = run(sandbox, "sh", "-c", "echo h > /proc/sysrq-trigger")
    assert code != 0
    code, out, err = run(sandbox, "sh", "-c", "awk '$5 == \"/proc/sys\" {print $6}' /proc/self/mountinfo")
    assert code == 0, err
    assert out.split() and all(opts.split(",")[0] == "ro" for opts in out.split()), out


SYSCALLS = {"x86_64": {"keyctl": 250, "bpf": 321}, "aarch64": {"keyctl": 219, "bpf": 280}}


def test_seccomp_denials_hold(sandbox):
    numbers = SYSCALLS.get(os.uname().machine)
    if numbers is None:
        pytest.skip("syscall numbers unknown for %s" % os.uname().machine)
    code, _, err = run(sandbox, "unshare", "-U", "true")
    assert code != 0, "unshare -U succeeded inside the sandbox"
    program = (
        "import ctypes, errno\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall.restype = ctypes.c_long\n"
        # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1)
        "r = libc.syscall(%d, 0, -3, 1, 0, 0)\n"
        "print(r, errno.errorcode.get(ctypes.get_errno(), '0'))\n"
        "attr = ctypes.create_string_buffer(128)\n"
        "ctypes.memmove(attr, (ctypes.c_uint32 * 4)(2, 4, 4, 1), 16)\n"  # BPF_MAP_TYPE_ARRAY
        "ctypes.set_errno(0)\n"
        "r = libc.syscall(%d, 0, attr, 128)\n"  # BPF_MAP_CREATE
        "print(r, errno.errorcode.get(ctypes.get_errno(), '0'))\n"
    ) % (numbers["keyctl"], numbers["bpf"])
    code, out, err = run(sandbox, "python3", "-c", program)
    assert code == 0, err
    keyctl, bpf = [line.split() for line in out.splitlines()]
    assert keyctl[0] == "-1" and keyctl[1] in ("EPERM", "ENOSYS"), keyctl
    assert bpf[0] == "-1" and bpf[1] in ("EPERM", "ENOSYS"), bpf


def test_init_is_out_of_the_workloads_reach(sandbox):
    """PID 1 has no controlling terminal (none of moatd's), and sandbox root
    cannot ptrace it or read its memory (it holds the control connection)."""
    program = (
        "import ctypes, errno, os\n"
        "stat = open('/proc/1/stat').read().rsplit(')', 1)[1].split()\n"
        "print('session', stat[3], 'tty', stat[4])\n"  # fields 6 (session) and 7 (tty_nr)
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.ptrace.restype = ctypes.c_long\n"
        "r = libc.ptrace(16, 1, None, None)\n"  # PTRACE_ATTACH
        "print('ptrace', r, errno.errorcode.get(ctypes.get_errno(), '0'))\n"
        "try:\n"
        "    open('/proc/1/mem', 'rb').read(1)\n"
        "    print('mem readable')\n"
        "except OSError as e:\n"
        "    print('mem', errno.errorcode[e.errno])\n"
    )
    code, out, err = run(sandbox, "python3", "-c", program)
    assert code == 0, err
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["session"] == "1 tty 0", out  # its own session, no terminal
    assert lines["ptrace"].startswith("-1 EPERM"), out
    assert lines["mem"] in ("EACCES", "EPERM"), out


def test_raw_and_exotic_sockets_are_refused(sandbox):
    program = (
        "import socket, errno\n"
        "for family, kind in ((socket.AF_PACKET, socket.SOCK_RAW), (socket.AF_INET, socket.SOCK_RAW),\n"
        "                     (40, socket.SOCK_STREAM), (44, socket.SOCK_RAW)):\n"  # AF_VSOCK, AF_XDP
        "    try:\n"
        "        socket.socket(family, kind).close()\n"
        "        print(family, 'allowed')\n"
        "    except OSError as e:\n"
        "        print(family, errno.errorcode[e.errno])\n"
        "socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()\n"
        "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()\n"
        "print('inet ok')\n"
    )
    code, out, err = run(sandbox, "python3", "-c", program)
    assert code == 0, err
    assert "allowed" not in out, out
    assert "inet ok" in out
    status = run(sandbox, "cat", "/proc/self/status")[1]
    cap_eff = int([l for l in status.splitlines() if l.startswith("CapEff:")][0].split()[1], 16)
    assert not cap_eff & (1 << 13), "CAP_NET_RAW kept"  # CAP_NET_RAW = 13


def test_unknown_numeric_user_is_not_group_root(sandbox):
    code, out, err = run(sandbox, "id", user="4242")
    assert code == 0, err
    assert "uid=4242" in out and "gid=4242" in out and "gid=0" not in out, out


def test_host_interrupt_counts_are_masked(sandbox):
    code, out, _ = run(sandbox, "cat", "/proc/interrupts")
    assert out == ""
