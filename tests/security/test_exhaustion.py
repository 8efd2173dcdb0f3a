"""Resource exhaustion, from the attacker's side.

The workload is root inside its sandbox and tries to exhaust something that
is not its own: the host's pids, memory, disk, CPU or file table, moatd's
memory, fds and event loop, or the sandbox's teardown (processes that
outlive their exec or their sandbox). Every case runs against a sandbox with
small limits so the attack reaches its bound quickly, measures moatd's
health-check latency while it runs (`attack.responsive`), and checks moatd's
own RSS and fd count before and after (the `daemon_budget` fixture).

tests/e2e/test_limits.py already covers the plain cases (a python memory hog
is OOM-killed, a python fork bomb stops at pids.max, exec and sandbox
timeouts fire); test_flood.py one 1 GiB stdout; test_robustness.py 1-byte
frames nobody reads. These go further.
"""

import os
import socket
import threading
import time

import pytest
from moat._transport import decode_data

import attack
import moatd_harness
from moatd_harness import (cgroup_procs, find_sandbox_cgroups, proc_status, real_uid,
                           vmrss_kib)

moat = moatd_harness.moat

MIB = 1 << 20
# moatd may grow this much across one attack (allocator caches, one
# sandbox's 32 MiB output buffer): more is a leak or an unbounded buffer.
DAEMON_RSS_GROWTH_MAX_KIB = 48 * 1024
# How long teardown of an attacked sandbox may take.
DELETE_MAX_S = 5.0
# Host uid range of one sandbox: SANDBOX_UID_MIN-aligned, 65536 ids.
SANDBOX_UID_SPAN = 65536


# --- helpers -------------------------------------------------------------------

def create(moatd, **limits):
    limits.setdefault("timeout", 180)
    return moat.Sandbox.create(socket=moatd.socket, **limits)


def python(sb, code, timeout=60, text=True):
    """Start `python3 -c code` in the sandbox (stdin /dev/null)."""
    return sb.exec("python3", "-c", code, stdin=False, timeout=timeout, text=text)


def cgroup_dirs(moatd, sb):
    dirs = find_sandbox_cgroups(moatd.moat_dirs(), sb.id)
    assert dirs, "no cgroup of %s under %s" % (sb.id, moatd.moat_dirs())
    return dirs


def cgroup_file(dirs, *names):
    """Path of the first of `names` found in the sandbox's cgroup dirs (the
    top one of each hierarchy: shortest path first)."""
    for name in names:
        for d in sorted(dirs, key=len):
            path = os.path.join(d, name)
            if os.path.exists(path):
                return path
    return None


def read_int(path):
    with open(path) as f:
        value = f.read().split()[0]
    return None if value == "max" else int(value)


def read_keyed(path):
    with open(path) as f:
        return {k: int(v) for k, v in (line.split()[:2] for line in f if line.strip())}


def memory_limit_and_peak(dirs):
    """(limit, peak usage, kmem peak or None) in bytes, v1 or v2."""
    v1 = cgroup_file(dirs, "memory.limit_in_bytes")
    if v1:
        base = os.path.dirname(v1)
        kmem = os.path.join(base, "memory.kmem.max_usage_in_bytes")
        return (read_int(v1), read_int(os.path.join(base, "memory.max_usage_in_bytes")),
                read_int(kmem) if os.path.exists(kmem) else None)
    v2 = cgroup_file(dirs, "memory.max")
    base = os.path.dirname(v2)
    return read_int(v2), read_int(os.path.join(base, "memory.peak")), None


def reset_memory_peak(dirs):
    """Start a new peak measurement (v1: writing 0 resets max_usage; v2's
    memory.peak is only reset per open file, so it keeps the lifetime peak,
    which only makes the bound stricter)."""
    v1 = cgroup_file(dirs, "memory.max_usage_in_bytes")
    if v1:
        for name in ("memory.max_usage_in_bytes", "memory.kmem.max_usage_in_bytes"):
            path = os.path.join(os.path.dirname(v1), name)
            if os.path.exists(path):
                with open(path, "w") as f:
                    f.write("0")


def sandbox_pids(dirs):
    return sorted(set(p for d in dirs for p in cgroup_procs(d)))


def sandbox_uid_base(dirs):
    uids = [u for u in (real_uid(p) for p in sandbox_pids(dirs)) if u is not None]
    assert uids, "no process in the sandbox's cgroups"
    base = min(uids)
    assert base >= moatd_harness.SANDBOX_UID_MIN, "sandbox process runs as host uid %d" % base
    return base


def pids_in_uid_range(base):
    found = []
    for pid in moatd_harness.all_pids():
        uid = real_uid(pid)
        if uid is not None and base <= uid < base + SANDBOX_UID_SPAN:
            found.append(pid)
    return found


def state_of(pid):
    status = proc_status(pid)
    return status["State"].split()[0] if status and "State" in status else None


def non_init(pids):
    """Sandbox processes other than its init (the lowest host pid, started first)."""
    return pids[1:] if pids else []


def delete_and_check_nothing_left(moatd, sb, dirs, uid_base):
    """Delete the sandbox: within DELETE_MAX_S, and afterwards no process of
    its host uid range exists and its cgroups are gone."""
    start = time.monotonic()
    sb.terminate()
    elapsed = time.monotonic() - start
    assert elapsed < DELETE_MAX_S, "sandbox delete took %.1f s under attack" % elapsed
    deadline = time.monotonic() + 5
    while True:
        left = pids_in_uid_range(uid_base)
        cgroups = [d for d in dirs if os.path.exists(d)]
        if not left and not cgroups:
            return elapsed
        if time.monotonic() > deadline:
            raise AssertionError("after delete: processes of uid range %d+: %s; cgroups: %s" % (
                uid_base, moatd_harness._describe(left), cgroups))
        time.sleep(0.05)


def expected_nofile(daemon_pid):
    """RLIMIT_NOFILE a sandbox gets (docs/SECURITY.md row 13): 65536, capped
    at moatd's own hard limit when moatd lacks CAP_SYS_RESOURCE (bit 24)."""
    cap_effective = int(proc_status(daemon_pid)["CapEff"], 16)
    if cap_effective & (1 << 24):
        return 65536
    with open("/proc/%d/limits" % daemon_pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return min(65536, int(line.split()[4]))
    raise AssertionError("no open-files limit for moatd")


class Sampler:
    """Samples fn() every `interval` s on a thread while the block runs."""

    def __init__(self, fn, interval=0.05):
        self.fn, self.interval, self.values = fn, interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.values.append(self.fn())
            except (OSError, ValueError):
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        return False

    def max(self):
        return max(self.values) if self.values else None


@pytest.fixture(autouse=True)
def daemon_budget(moatd):
    """moatd's RSS and fd count before the test and after it (its sandboxes
    deleted): fds back to where they were, RSS within a bound."""
    rss_before = vmrss_kib(moatd.pid)
    fds_before = moatd.settled_fd_count()
    yield
    fds_after = moatd.settled_fd_count(target=fds_before, wait=10)
    rss_after = vmrss_kib(moatd.pid)
    print("moatd: rss %d -> %d KiB, fds %d -> %d" % (rss_before, rss_after, fds_before, fds_after))
    assert fds_after <= fds_before, "moatd kept %d fds after the attack" % (fds_after - fds_before)
    assert rss_after - rss_before < DAEMON_RSS_GROWTH_MAX_KIB, \
        "moatd grew %d KiB across the attack" % (rss_after - rss_before)


# --- pids ------------------------------------------------------------------------

FORK_BOMB = r"""
import os, sys, time
os.write(1, b"armed\n")
while True:
    try:
        if os.fork() == 0:
            continue            # the child forks too
    except OSError:
        time.sleep(0.01)        # table full: hold our pid and try again
"""


def test_fork_bomb_fills_pid_table_then_exec_fails_clearly(moatd):
    """Attack: a fork bomb whose children all keep forking fills the pid
    table, then the client asks for another exec and a file read.
    Bound: pids.current never exceeds pids=24; the exec request is answered
    within 10 s (a clear error with a stable code, or an exec that reports
    its exit) instead of hanging; the files API still works; once the bomb is
    killed a new exec runs; delete returns within 5 s leaving no process of
    the sandbox's uid range; moatd health p99 < 500 ms throughout."""
    with create(moatd, pids=24, memory=128) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        pids_current = cgroup_file(dirs, "pids.current")
        assert read_int(os.path.join(os.path.dirname(pids_current), "pids.max")) == 24
        with attack.responsive(moatd), Sampler(lambda: read_int(pids_current)) as pids:
            bomb = python(sb, FORK_BOMB, timeout=60)
            deadline = time.monotonic() + 15
            while read_int(pids_current) < 24 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert read_int(pids_current) == 24, "bomb did not fill the table"
            start = time.monotonic()
            outcome = None
            try:
                p = sb.exec("true", stdin=False, timeout=5)
                code = p.wait(timeout=10)
                outcome = "exec %s exited %r" % (p.id, code)
            except moat.Timeout as exc:
                raise AssertionError("exec into a full pid table hung: %s" % exc)
            except moat.Error as exc:
                outcome = "error %s (HTTP %s): %s" % (exc.code, exc.status, exc.message)
                assert exc.code and exc.code not in ("internal", "error"), outcome
            answered = time.monotonic() - start
            print("exec into a full pid table: %s after %.2f s" % (outcome, answered))
            assert answered < 10
            assert sb.files.read("/etc/hostname"), "files API failed with the pid table full"
            bomb.kill()
            deadline = time.monotonic() + 10
            while True:
                try:
                    result = sb.run(["true"], timeout=5)
                    if result.exit_code == 0:
                        break
                except moat.Error:
                    pass
                assert time.monotonic() < deadline, "no exec worked after the bomb was killed"
                time.sleep(0.2)
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)
        print("pids.current peak %s of 24" % pids.max())
        assert pids.max() <= 24


# --- memory ------------------------------------------------------------------------

FILL = r"""
import os, sys
path, total = sys.argv[1], int(sys.argv[2])
chunk = b"\xa5" * (1 << 20)
written = 0
try:
    with open(path, "wb", buffering=0) as f:
        while written < total:
            written += f.write(chunk)
            if written % (4 << 20) == 0:
                os.write(1, b"%d\n" % written)
except OSError as e:
    os.write(1, b"stopped %d %s\n" % (written, e.strerror.encode()))
    sys.exit(0)
os.write(1, b"completed %d\n" % written)
"""


def test_tmpfs_writes_are_charged_to_the_memory_limit(moatd):
    """Attack: with memory=64 MiB but disk=512 MiB, write 256 MiB into the
    writable layer (/tmp sits in the sandbox's tmpfs upper dir): tmpfs pages
    are memory, so this is a memory attack dressed as a disk write.
    Bound: the file never holds more than the 64 MiB memory limit (the writer
    is OOM-killed or its write fails); the cgroup's peak usage (user + kernel
    memory) stays at or below 64 MiB; the sandbox survives and is deleted in
    < 5 s leaving nothing; moatd stays responsive."""
    with create(moatd, memory=64, disk=512) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        with attack.responsive(moatd):
            p = sb.exec("python3", "-c", FILL, "/tmp/big", str(256 * MIB), stdin=False, timeout=60)
            out = p.stdout.read()
            code = p.wait(timeout=60)
            size = sb.files.stat("/tmp/big")["size"]
            limit, peak, kmem_peak = memory_limit_and_peak(dirs)
            print("tmpfs fill: exit %s oom_killed=%s, file %d MiB, peak %d MiB of %d, kmem peak %s; %r" % (
                code, p.oom_killed, size // MIB, peak // MIB, limit // MIB, kmem_peak, out[-120:]))
            assert "completed" not in out, "256 MiB written into tmpfs with a 64 MiB memory limit"
            assert size <= 64 * MIB
            assert peak <= limit == 64 * MIB
            sb.files.remove("/tmp/big")
            assert sb.run(["true"]).exit_code == 0, "sandbox unusable after its tmpfs was freed"
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)


def test_dev_shm_is_capped_at_64_mib_and_charged(moatd):
    """Attack: fill /dev/shm (POSIX shared memory, a tmpfs) with 100 MiB,
    then, in a sandbox whose memory is smaller than /dev/shm, fill it again.
    Bound: with memory=128, writes stop with ENOSPC at 64 MiB; with
    memory=40, the cgroup's peak stays <= 40 MiB (shm pages are charged to
    the sandbox, not the host); moatd stays responsive; delete < 5 s."""
    with attack.responsive(moatd):
        with create(moatd, memory=128) as sb:
            dirs = cgroup_dirs(moatd, sb)
            uid_base = sandbox_uid_base(dirs)
            result = sb.run(["python3", "-c", FILL, "/dev/shm/fill", str(100 * MIB)], timeout=60)
            print("shm fill, memory=128: %r" % result.stdout[-80:])
            assert "stopped %d No space left on device" % (64 * MIB) in result.stdout, result.stdout
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)

        with create(moatd, memory=40) as sb:
            dirs = cgroup_dirs(moatd, sb)
            uid_base = sandbox_uid_base(dirs)
            p = sb.exec("python3", "-c", FILL, "/dev/shm/fill", str(100 * MIB), stdin=False, timeout=60)
            out = p.stdout.read()
            code = p.wait(timeout=60)
            limit, peak, _ = memory_limit_and_peak(dirs)
            print("shm fill, memory=40: exit %s oom=%s peak %d MiB; %r" % (
                code, p.oom_killed, peak // MIB, out[-80:]))
            assert "stopped %d" % (64 * MIB) not in out, "64 MiB of shm in a 40 MiB sandbox"
            assert peak <= limit == 40 * MIB
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)


KERNEL_MEMORY = r"""
import os, socket, sys, threading
phase, count = sys.argv[1], int(sys.argv[2])
held, made, stop = [], 0, "completed"
payload = b"k" * 65536
event = threading.Event()
try:
    for i in range(count):
        if phase == "thread":
            threading.Thread(target=event.wait, daemon=True).start()
        else:
            if phase == "pipe":
                r, w = os.pipe()
                held += [r, w]
                os.set_blocking(w, False)
                write = lambda: os.write(w, payload)
            else:
                a, b = socket.socketpair()
                held += [a, b]
                a.setblocking(False)
                write = lambda: a.send(payload)
            try:
                while True:
                    write()
            except BlockingIOError:
                pass
        made += 1
        if made % 100 == 0:
            os.write(1, b"%s %d\n" % (phase.encode(), made))
except (OSError, RuntimeError) as e:
    stop = str(e)
os.write(1, b"%s %d %s\n" % (phase.encode(), made, stop.encode()))
"""


def test_kernel_memory_of_pipes_sockets_and_threads_is_charged(moatd):
    """Attack: allocate memory the kernel holds rather than the process, in
    a sandbox of memory=48 MiB, one exec per kind: 4000 pipes each filled
    with 64 KiB (250 MiB of pipe buffers), 4000 unix socket pairs with full
    send buffers (~800 MiB of skbs), 3000 idle threads (kernel stacks, task
    structs). A limit that counted only user memory would not see them.
    Bound: the cgroup's peak usage (v1 memory.max_usage_in_bytes includes
    kernel memory) stays <= 48 MiB; neither the pipes nor the sockets
    complete (they are OOM-killed or refused); every exec ends within 60 s;
    what stopped each one, and the kernel-memory peak, are printed; moatd
    responsive."""
    with create(moatd, memory=48, pids=4096) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        with attack.responsive(moatd):
            for phase, count in (("pipe", 4000), ("socketpair", 4000), ("thread", 3000)):
                reset_memory_peak(dirs)
                start = time.monotonic()
                p = sb.exec("python3", "-c", KERNEL_MEMORY, phase, str(count), stdin=False, timeout=90)
                out = p.stdout.read()
                exit_code = p.wait(timeout=90)
                elapsed = time.monotonic() - start
                limit, peak, kmem_peak = memory_limit_and_peak(dirs)
                print("kernel memory, %s: exit %s oom=%s after %.1f s; peak %.1f MiB of %d; kmem peak %s MiB; %s" % (
                    phase, exit_code, p.oom_killed, elapsed, peak / MIB, limit // MIB,
                    None if kmem_peak is None else round(kmem_peak / MIB, 1), out.splitlines()[-1:]))
                assert peak <= limit == 48 * MIB
                assert elapsed < 60
                if phase != "thread":
                    assert "completed" not in out, "%s: far beyond 48 MiB of kernel buffers: %s" % (phase, out[-200:])
                    assert p.oom_killed or out.strip(), out
        delete_and_check_nothing_left(moatd, sb, dirs, uid_base)


def tcp_memory_bytes():
    """The kernel's TCP buffer memory in use, host-wide (tcp_memory_allocated,
    /proc/net/sockstat "TCP: ... mem" in pages)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    raise AssertionError("no TCP line in /proc/net/sockstat")


def test_tcp_socket_buffers_are_charged_to_the_sandbox(moatd):
    """Attack: in a sandbox of memory=48 MiB (network none: loopback only),
    open 150 TCP connections to itself and fill each one's send and receive
    buffers without reading: ~1 MiB of kernel memory per connection, held by
    the kernel's TCP stack, not by the process.
    Bound: the host's TCP memory in use (tcp_memory_allocated, from the host)
    grows by no more than the sandbox's 48 MiB (+32 MiB slack: under its
    limit TCP still lets each socket allocate a little) while the
    sandbox holds its connections: past that the sandbox's own memory cgroup
    refuses or OOM-kills, never the host's TCP."""
    code = r"""
import os, socket, sys, time
held, queued, err = [], 0, "none"
payload = b"t" * 65536
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(512)
try:
    for i in range(150):
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
        held += [a, b]
        a.setblocking(False)
        try:
            while True:
                queued += a.send(payload)
        except BlockingIOError:
            pass
except OSError as e:
    err = e.strerror
os.write(1, b"connections=%d queued=%d MiB err=%s\n" % (len(held) // 2, queued >> 20, err.encode()))
sys.stdin.read(1)
"""
    before = tcp_memory_bytes()
    with create(moatd, memory=48) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        with attack.responsive(moatd):
            p = sb.exec("python3", "-c", code, timeout=60)
            held = p.stdout.readline().strip()
            during = tcp_memory_bytes()
            limit, peak, kmem_peak = memory_limit_and_peak(dirs)
            p.stdin.write_eof()
            p.stdout.close()
            p.wait(timeout=30)
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)
    grown = during - before
    print("tcp: %s; host TCP memory +%d MiB; sandbox cgroup peak %d MiB of %d (oom=%s)" % (
        held or "(killed)", grown // MIB, peak // MIB, limit // MIB, p.oom_killed))
    assert grown <= limit + 32 * MIB, \
        "a 48 MiB sandbox held %d MiB of host TCP memory (%s)" % (grown // MIB, held)


# --- disk and inodes ---------------------------------------------------------------------

def test_disk_fill_stops_at_the_disk_limit(moatd):
    """Attack: fill the writable layer (disk=16 MiB, memory=256) through
    /tmp, then through a file in the image's own tree (/usr is read-only;
    /root and /etc are upper-layer writes), then through the files API.
    Bound: no writer gets past 16 MiB in total (ENOSPC inside, 429
    disk_full through the API); freeing the space makes the sandbox usable
    again; moatd responsive; delete < 5 s."""
    with create(moatd, memory=256, disk=16) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        with attack.responsive(moatd):
            first = sb.run(["python3", "-c", FILL, "/tmp/a", str(64 * MIB)], timeout=60)
            second = sb.run(["python3", "-c", FILL, "/root/b", str(64 * MIB)], timeout=60)
            print("disk fill: %r / %r" % (first.stdout[-60:], second.stdout[-60:]))
            assert "No space left on device" in first.stdout, first.stdout
            assert "No space left on device" in second.stdout, second.stdout
            a = sb.files.stat("/tmp/a")["size"]
            b = sb.files.stat("/root/b")["size"]
            assert a + b <= 16 * MIB, "wrote %d bytes into a 16 MiB layer" % (a + b)
            with pytest.raises(moat.LimitExceeded) as refused:
                sb.files.write("/tmp/c", b"x" * MIB)
            assert refused.value.code == "disk_full", refused.value
            sb.files.remove("/tmp/a")
            assert sb.run(["sh", "-c", "echo ok > /tmp/ok && cat /tmp/ok"]).stdout == "ok\n"
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)


def test_inode_exhaustion_is_bounded_by_memory(moatd):
    """Attack: create empty files (and 1-byte files) in the writable layer
    until something stops it, for at most 40 s. A tmpfs sized by bytes
    only (disk=64) lets empty files through almost for free, so what bounds
    them must be the inode limit or the memory cgroup charging every inode
    and dentry (memory=48).
    Bound: the creation is stopped by an error (ENOSPC/ENOMEM) or the OOM
    killer, not by the time cap; the cgroup's peak stays <= 48 MiB; the
    sandbox is deleted in < 5 s leaving nothing; moatd responsive."""
    code = r"""
import os, time
os.mkdir("/tmp/i")
os.chdir("/tmp/i")
n, why, deadline = 0, "time cap", time.monotonic() + 40
try:
    while time.monotonic() < deadline:
        for _ in range(1000):
            fd = os.open("f%d" % n, os.O_CREAT | os.O_WRONLY, 0o644)
            if n % 2:
                os.write(fd, b"x")
            os.close(fd)
            n += 1
        if n % 5000 == 0:
            os.write(1, b"%d\n" % n)
except OSError as e:
    why = e.strerror
os.write(1, b"files=%d stopped by %s\n" % (n, why.encode()))
"""
    with create(moatd, memory=48, disk=64) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        with attack.responsive(moatd):
            start = time.monotonic()
            p = python(sb, code, timeout=90)
            out = p.stdout.read()
            exit_code = p.wait(timeout=90)
            elapsed = time.monotonic() - start
            limit, peak, kmem_peak = memory_limit_and_peak(dirs)
            print("inodes: exit %s oom=%s after %.1f s, peak %.1f MiB of %d, kmem peak %s; %r" % (
                exit_code, p.oom_killed, elapsed, peak / MIB, limit // MIB, kmem_peak, out[-100:]))
            assert "stopped by time cap" not in out, "40 s of file creation met no bound: " + out[-100:]
            assert p.oom_killed or "stopped by" in out, out[-200:]
            assert peak <= limit == 48 * MIB
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)


# --- file descriptors ----------------------------------------------------------------------

def test_fd_exhaustion_stops_at_rlimit_nofile(moatd):
    """Attack: open /dev/null until EMFILE, try to raise RLIMIT_NOFILE past
    its hard limit, then bursts of socket pairs, pipes, eventfds, epoll and
    inotify instances, each until refused.
    Bound: RLIMIT_NOFILE is 65536 soft and hard, or moatd's own hard limit
    when moatd lacks CAP_SYS_RESOURCE (docs/SECURITY.md row 13), and
    cannot be raised; opening stops with EMFILE at that count; inotify
    instances stop at the per-user limit (fs.inotify.max_user_instances)
    with EMFILE; every burst ends in an errno (no crash of init: a new exec
    works afterwards); the cgroup's peak memory stays within memory=256;
    moatd responsive."""
    code = r"""
import ctypes, errno, os, resource, select, socket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
print("nofile", soft, hard)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard * 2, hard * 2))
    print("raise ok")
except (ValueError, OSError) as e:
    print("raise refused", type(e).__name__)
def burst(name, make):
    held, n, err = [], 0, "none"
    try:
        for _ in range(70000):
            held.append(make())
            n += 1
    except OSError as e:
        err = errno.errorcode.get(e.errno, str(e.errno))
    for h in held:
        for fd in (h if isinstance(h, tuple) else (h,)):
            if isinstance(fd, socket.socket):
                fd.close()
            elif isinstance(fd, int):
                os.close(fd)
            else:
                fd.close()
    print(name, n, err, flush=True)
libc = ctypes.CDLL(None, use_errno=True)
def inotify():
    fd = libc.inotify_init1(0)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd
burst("open", lambda: os.open("/dev/null", os.O_RDONLY))
burst("socketpair", socket.socketpair)
burst("pipe", os.pipe)
burst("eventfd", lambda: os.eventfd(0))
burst("epoll", select.epoll)
burst("inotify", inotify)
"""
    with create(moatd, memory=256) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        with attack.responsive(moatd):
            result = sb.run(["python3", "-c", code], timeout=90)
            limit, peak, kmem_peak = memory_limit_and_peak(dirs)
            print("fds: exit %s, peak %.1f MiB (kmem %s)\n%s%s" % (
                result.exit_code, peak / MIB, kmem_peak, result.stdout, result.stderr[-300:]))
            assert result.exit_code == 0, result.stderr[-500:]
            lines = {l.split()[0]: l.split()[1:] for l in result.stdout.splitlines()}
            expected = expected_nofile(moatd.pid)
            assert lines["nofile"] == [str(expected)] * 2, (lines["nofile"], expected)
            assert lines["raise"][0] == "refused", "RLIMIT_NOFILE raised past its hard limit"
            # The limit minus stdin/out/err and python's own few descriptors.
            opened, why = int(lines["open"][0]), lines["open"][1]
            assert why == "EMFILE" and expected - 64 <= opened < expected, lines["open"]
            for name in ("socketpair", "pipe", "eventfd", "epoll"):
                count, why = int(lines[name][0]), lines[name][1]
                assert why in ("EMFILE", "ENFILE", "ENOMEM"), (name, lines[name])
                assert count <= expected, (name, count)
            with open("/proc/sys/fs/inotify/max_user_instances") as f:
                max_instances = int(f.read())
            assert lines["inotify"][1] == "EMFILE" and int(lines["inotify"][0]) <= max_instances, lines["inotify"]
            assert peak <= limit
            assert sb.run(["true"]).exit_code == 0
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)


def test_inotify_exhaustion_does_not_reach_the_host(moatd):
    """Attack: create inotify instances until refused and hold them.
    Bound: what the sandbox holds is charged to the sandbox alone: while it
    holds them, host root (this test, uid 0) and a second sandbox can still
    create an inotify instance. (The hold lasts about a second: if the bound
    fails, host root is briefly short of inotify instances.)"""
    code = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
n = 0
while libc.inotify_init1(0) >= 0:
    n += 1
os.write(1, b"%d\n" % n)
sys.stdin.read(1)
"""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def host_can_create():
        fd = libc.inotify_init1(0)
        if fd < 0:
            return os.strerror(ctypes.get_errno())
        os.close(fd)
        return "ok"

    probe = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.inotify_init1(0)\n"
             "print('ok' if fd >= 0 else os.strerror(ctypes.get_errno()))\n")
    assert host_can_create() == "ok"
    with create(moatd) as attacker, create(moatd) as bystander:
        p = attacker.exec("python3", "-c", code, timeout=30)
        held = p.stdout.readline().strip()
        host = host_can_create()
        other = bystander.run(["python3", "-c", probe], timeout=20).stdout.strip()
        p.stdin.write_eof()
        p.stdout.close()
        p.wait(timeout=20)
    print("sandbox held %s inotify instances; then host root: %s, other sandbox: %s" % (held, host, other))
    assert host == "ok", "host root could not create an inotify instance: %s" % host
    assert other == "ok", "another sandbox could not create an inotify instance: %s" % other


# --- CPU -------------------------------------------------------------------------------------

def test_cpu_spin_on_all_cores_stays_within_quota(moatd):
    """Attack: spin on every core (one busy process per host CPU, plus a
    few more) in a sandbox with cpu=0.5.
    Bound: the sandbox's CPU time over the window (cpuacct.usage or
    cpu.stat usage_usec, read from the host) stays within 0.5 CPU x wall
    time, +25% and 0.3 s of slack for period boundaries; unlimited, the same
    spinners would use ~2 CPUs on this host. moatd health p99 < 500 ms."""
    with create(moatd, cpu=0.5) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        v1 = cgroup_file(dirs, "cpuacct.usage")
        v2 = None if v1 else cgroup_file(dirs, "cpu.stat")

        def used_seconds():
            if v1:
                return read_int(v1) / 1e9
            return read_keyed(v2)["usage_usec"] / 1e6

        spinners = (os.cpu_count() or 2) + 2
        code = ("import os\nfor _ in range(%d):\n    if os.fork() == 0:\n        break\n"
                "os.write(1, b'.\\n')\nwhile True:\n    pass\n" % (spinners - 1))
        with attack.responsive(moatd):
            p = python(sb, code, timeout=60)
            # Let every spinner start, then measure a window.
            assert p.stdout.readline() != ""
            p.stdout.close()  # our stream's connection, not moatd's to keep
            time.sleep(0.5)
            used_before, wall_before = used_seconds(), time.monotonic()
            time.sleep(4.0)
            used, wall = used_seconds() - used_before, time.monotonic() - wall_before
            p.kill()
            p.wait(timeout=20)
        print("cpu=0.5 with %d spinners: %.2f CPU-s over %.2f s wall (%.2f CPUs)" % (
            spinners, used, wall, used / wall))
        assert used <= 0.5 * wall * 1.25 + 0.3, "sandbox used %.2f CPUs with cpu=0.5" % (used / wall)
        assert used >= 0.1, "the spinners did not run at all (%.2f CPU-s)" % used
        delete_and_check_nothing_left(moatd, sb, dirs, uid_base)


# --- output flood ----------------------------------------------------------------------------

FLOOD = r"""
import os, sys
procs = int(sys.argv[1])
for _ in range(procs - 1):
    if os.fork() == 0:
        break
block = b"F" * 65536
while True:
    os.write(1, block)
    os.write(2, block)
"""


class OutputReader(threading.Thread):
    """Reads one exec's interleaved stdout+stderr stream at full speed,
    counting bytes, until told to stop or the stream ends."""

    def __init__(self, socket_path, sb, process):
        super().__init__(daemon=True)
        self.path = "/v1/sandboxes/%s/execs/%s/output" % (sb.id, process.id)
        self.client = moat.Client(socket_path, timeout=30)
        self.received = 0
        self.stop = threading.Event()

    def run(self):
        stream = self.client.stream(self.path)
        try:
            while not self.stop.is_set():
                event = stream.next_event()
                if event is None or "stream" not in event:
                    return
                self.received += len(decode_data(event))
        except moat.Error:
            pass
        finally:
            stream.close()


def test_concurrent_floods_with_readers_that_stall_or_never_read(moatd):
    """Attack: 8 execs in one sandbox, each 3 processes writing stdout and
    stderr at full speed for ~5 s: one exec is read at full speed, one by a
    raw HTTP client that sends the request and then never reads its socket,
    the other 6 not at all. A second sandbox floods the same way from one
    exec, read at full speed.
    Bound: moatd's RSS peak stays < 96 MiB above its baseline (it buffers at
    most 1 MiB per unread stream and 32 MiB per sandbox); both full-speed
    readers keep receiving during every second of the flood (one sandbox's
    unread flood does not stall another's reader, nor its own other
    execs); moatd health p99 < 500 ms; each delete < 5 s and every fd of the
    never-reading client's request is released."""
    baseline = vmrss_kib(moatd.pid)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with create(moatd, memory=256, pids=128) as sb1, create(moatd, memory=256, pids=128) as sb2:
        dirs1, dirs2 = cgroup_dirs(moatd, sb1), cgroup_dirs(moatd, sb2)
        base1, base2 = sandbox_uid_base(dirs1), sandbox_uid_base(dirs2)
        try:
            with attack.responsive(moatd), Sampler(lambda: vmrss_kib(moatd.pid), 0.1) as rss:
                execs = [sb1.exec("python3", "-c", FLOOD, "3", stdin=False, timeout=60, text=False)
                         for _ in range(8)]
                other = sb2.exec("python3", "-c", FLOOD, "3", stdin=False, timeout=60, text=False)
                readers = [OutputReader(moatd.socket, sb1, execs[0]), OutputReader(moatd.socket, sb2, other)]
                for reader in readers:
                    reader.start()
                raw.connect(moatd.socket)
                raw.sendall(("GET /v1/sandboxes/%s/execs/%s/output HTTP/1.1\r\nHost: x\r\n\r\n"
                             % (sb1.id, execs[1].id)).encode())
                progress = []
                for second in range(5):
                    before = [r.received for r in readers]
                    time.sleep(1.0)
                    progress.append([r.received - b for r, b in zip(readers, before)])
                for reader in readers:
                    reader.stop.set()
                for p in execs + [other]:
                    p.kill()
                for reader in readers:
                    reader.join(10)
                delete_and_check_nothing_left(moatd, sb1, dirs1, base1)
                delete_and_check_nothing_left(moatd, sb2, dirs2, base2)
        finally:
            raw.close()
    peak = rss.max() - baseline
    print("flood: MiB/s per second [same sandbox, other sandbox]: %s; moatd rss %d KiB, peak +%d KiB" % (
        [[x // MIB for x in row] for row in progress], baseline, peak))
    assert all(row[1] > 0 for row in progress), "the other sandbox's reader stalled: %s" % progress
    assert all(row[0] > 0 for row in progress), "a reader in the flooding sandbox stalled: %s" % progress
    assert peak < 96 * 1024, "moatd RSS grew %d KiB under the flood" % peak


def test_tiny_writes_from_many_processes_arrive_whole(moatd):
    """Attack: 6 processes each make 100,000 one-byte writes, alternating
    stdout and stderr, so every byte can become its own frame.
    Bound: every byte arrives (600,000 in all, nothing dropped), moatd's RSS
    peak stays < 48 MiB above baseline (per-frame overhead is charged to the
    output credit), health p99 < 500 ms."""
    # The parent waits for its children: output written after the exec's
    # own process exited is not waited for (see the holder/flooder case).
    code = r"""
import os
children = []
for _ in range(5):
    pid = os.fork()
    if pid == 0:
        children = None
        break
    children.append(pid)
for i in range(50000):
    os.write(1, b"o")
    os.write(2, b"e")
if children is None:
    os._exit(0)
for pid in children:
    os.waitpid(pid, 0)
"""
    baseline = vmrss_kib(moatd.pid)
    with create(moatd, memory=256) as sb, attack.responsive(moatd), \
            Sampler(lambda: vmrss_kib(moatd.pid), 0.1) as rss:
        p = python(sb, code, timeout=120, text=False)
        got = {}

        def drain(stream):
            got[stream.name] = sum(len(c) for c in stream.chunks())

        threads = [threading.Thread(target=drain, args=(s,), daemon=True) for s in (p.stdout, p.stderr)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert p.wait(timeout=30) == 0
    print("tiny writes: %s; moatd rss peak +%d KiB" % (got, rss.max() - baseline))
    assert got == {"stdout": 300000, "stderr": 300000}
    assert rss.max() - baseline < 48 * 1024


# --- orphans, zombies, escapes from the exec ----------------------------------------------------

def test_thousands_of_orphans_and_zombies_are_reaped(moatd):
    """Attack: 500 double forks (python forks slowly on this VM: ~10 ms
    each) whose middle process exits at once (so the
    grandchild is an orphan, reparented to the sandbox's init), plus a
    parent that makes 40 zombies and never waits for them, in a sandbox
    with pids=64.
    Bound: pids.current never exceeds 64; once the workload exits, within
    5 s no zombie remains and init is the sandbox's only process (init reaps
    what is reparented to it); delete < 5 s leaves nothing; moatd
    responsive."""
    code = r"""
import os, time
made = 0
while made < 500:
    try:
        pid = os.fork()
    except OSError:
        time.sleep(0.005)
        continue
    if pid == 0:
        try:
            if os.fork() == 0:
                os._exit(0)      # the orphan: exits once reparented
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    made += 1
zombies = 0
for _ in range(40):
    if os.fork() == 0:
        os._exit(0)
    zombies += 1
time.sleep(0.5)                  # every zombie has exited by now
os.write(1, b"orphans=%d zombies=%d\n" % (made, zombies))
time.sleep(1)
"""
    with create(moatd, pids=64, memory=128) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        pids_current = cgroup_file(dirs, "pids.current")

        init = sandbox_pids(dirs)[0]

        def zombies_now():
            # Zombies have left cgroup.procs already: look at init's descendants.
            return sum(1 for pid in moatd_harness.descendants(init) if state_of(pid) == "Z")

        with attack.responsive(moatd), Sampler(lambda: read_int(pids_current)) as pids:
            p = python(sb, code, timeout=60)
            out = p.stdout.readline()
            p.stdout.close()
            seen_zombies = max(zombies_now() for _ in range(3))
            assert p.wait(timeout=60) == 0, p.stderr.read()
            deadline = time.monotonic() + 5
            while True:
                left = sandbox_pids(dirs)
                if len(left) == 1 and zombies_now() == 0:
                    break
                assert time.monotonic() < deadline, "not reaped: %s" % [(x, state_of(x)) for x in left]
                time.sleep(0.05)
        print("%s zombies seen while parent alive: %d; pids.current peak %s of 64" % (
            out.strip(), seen_zombies, pids.max()))
        assert out.strip() == "orphans=500 zombies=40"
        assert seen_zombies >= 40, "the zombie attack did not happen (%d)" % seen_zombies
        assert pids.max() <= 64
        delete_and_check_nothing_left(moatd, sb, dirs, uid_base)


# Three escapees: setsid(), double fork, SIGTERM/SIGHUP ignored, stdout closed.
ESCAPE = r"""
import os, signal, sys, time
for i in range(3):
    if os.fork() == 0:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        while True:
            time.sleep(1)
time.sleep(0.5)
os.write(1, b"escaped\n")
while True:
    time.sleep(1)
"""


def _escapees(dirs):
    """Sandbox processes besides init (the exec itself is gone by then)."""
    return non_init(sandbox_pids(dirs))


@pytest.mark.xfail(strict=True, reason=(
    "known gap (docs/SECURITY.md, Known limits): an exec timeout SIGKILLs the "
    "exec's process group (src/init/process.c process_signal: kill(-pid)); a "
    "grandchild that called setsid() survives its exec's timeout until the "
    "sandbox is deleted (test_sandbox_delete_kills_setsid_double_forked_survivors). "
    "Tracking an exec's descendants needs a cgroup per exec"))
def test_timed_out_exec_leaves_no_setsid_grandchild(moatd):
    """Attack: an exec with timeout=2 s starts three grandchildren that call
    setsid() (leaving the exec's process group), double-fork, ignore SIGTERM
    and SIGHUP and close their stdio, then the exec sleeps forever.
    Bound: after the timeout is reported (exit 124, timed_out), within 5 s
    nothing the exec started is still running in the sandbox (init alone)."""
    with create(moatd, pids=64) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        with attack.responsive(moatd):
            p = python(sb, ESCAPE, timeout=2)
            assert p.wait(timeout=20) == 124 and p.timed_out
            deadline = time.monotonic() + 5
            while _escapees(dirs) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = _escapees(dirs)
            print("after the exec timeout: %s" % moatd_harness._describe(left))
            assert not left, "survived their exec's timeout: %s" % moatd_harness._describe(left)
        delete_and_check_nothing_left(moatd, sb, dirs, uid_base)


def test_sandbox_delete_kills_setsid_double_forked_survivors(moatd):
    """Attack: as above, escapees that setsid(), double-fork and ignore
    SIGTERM/SIGHUP, left running after their exec timed out; then the
    sandbox is deleted.
    Bound: delete returns within 5 s; afterwards (checked from the host) no
    process of the sandbox's host uid range exists and its cgroups are
    gone; moatd responsive."""
    with create(moatd, pids=64) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        with attack.responsive(moatd):
            p = python(sb, ESCAPE, timeout=2)
            assert p.stdout.readline() == "escaped\n"
            p.stdout.close()
            assert p.wait(timeout=20) == 124
            escapees = _escapees(dirs)
            print("escapees before delete: %s" % moatd_harness._describe(escapees))
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)
        for pid in escapees:
            assert state_of(pid) is None or real_uid(pid) < uid_base, "escapee %d survived delete" % pid


def test_exit_is_reported_while_children_hold_or_flood_stdout(moatd):
    """Attack: the exec exits (code 3) while children it leaves behind (a)
    hold its stdout and stderr open, sleeping, and (b) keep writing to its
    stdout at full speed forever, while a client reads the output.
    Bound: in both cases the exec's exit (3) is reported, and its output
    stream ends, within 10 s of the parent's exit; moatd responsive."""
    holder = ("import os, time\nif os.fork() == 0:\n    time.sleep(120)\n"
              "os.write(1, b'parent out\\n')\nos._exit(3)\n")
    flooder = ("import os, time\nif os.fork() == 0:\n    b = b'z' * 65536\n    while True:\n"
               "        os.write(1, b)\nos.write(2, b'parent out\\n')\ntime.sleep(0.5)\nos._exit(3)\n")
    with create(moatd, pids=64) as sb, attack.responsive(moatd):
        for name, code in (("holder", holder), ("flooder", flooder)):
            p = python(sb, code, timeout=60, text=False)
            start = time.monotonic()
            done = {}

            def read():
                done["bytes"] = sum(len(c) for c in p.stdout.chunks())
                done["at"] = time.monotonic()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            reader.join(15)
            ended = "at" in done
            try:
                code_seen = p.wait(timeout=1)
            except moat.Timeout:
                code_seen = None
            print("%s: stream ended=%s after %.1f s (%s bytes), exit %r" % (
                name, ended, done.get("at", time.monotonic()) - start, done.get("bytes"), code_seen))
            sb.run(["sh", "-c", "kill -9 -1"])  # clear the children before the next case
            assert code_seen == 3, "%s: exit not reported within 15 s" % name
            assert ended and done["at"] - start < 10, "%s: output stream did not end" % name


def test_timed_out_exec_with_unread_output_reports_its_exit(moatd):
    """Attack: an exec with timeout=2 s floods stdout while the client only
    waits for it (reads nothing), as a client that trusts the timeout to
    bound the exec would.
    Bound: its exit (124, timed_out) is reported by wait within 10 s of
    the start, although its output is unread; delete < 5 s leaves nothing."""
    with create(moatd, pids=64) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        with attack.responsive(moatd):
            p = python(sb, "import os\nwhile True:\n    os.write(1, b'x' * 65536)\n", timeout=2)
            try:
                code = p.wait(timeout=10)
            except moat.Timeout:
                code = None
            info = p.refresh().info
            print("unread flood after its timeout: wait -> %r, state %s, timed_out %s, processes %s" % (
                code, info["state"], info["timed_out"], non_init(sandbox_pids(dirs))))
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)
        assert code == 124, "exit of a timed-out exec not reported while its output is unread"


def test_sigstop_of_self_and_siblings_does_not_wedge_timeouts_or_delete(moatd):
    """Attack: one exec SIGSTOPs itself (and its group); another stops every
    process it may signal (kill -STOP -1) including a sibling exec that is
    flooding stdout to an unread pipe.
    Bound: the self-stopped exec's timeout (2 s) is still reported within
    10 s (SIGKILL reaches stopped processes); the stopped sibling is killed
    by a signal request within 10 s; a new exec still runs (init is not
    stoppable: own session, not in -1's reach); the killed sibling's exit
    arrives once its buffered output is read; delete < 5 s leaves
    nothing; moatd responsive."""
    with create(moatd, pids=64) as sb:
        dirs = cgroup_dirs(moatd, sb)
        uid_base = sandbox_uid_base(dirs)
        with attack.responsive(moatd):
            start = time.monotonic()
            stopped_self = sb.exec("sh", "-c", "kill -STOP 0; sleep 100", stdin=False, timeout=2)
            sibling = python(sb, FLOOD.replace("procs = int(sys.argv[1])", "procs = 1"), timeout=120)
            time.sleep(0.5)
            stopper = sb.run(["sh", "-c", "kill -STOP -1; echo stopped"], timeout=10)
            assert stopper.stdout == "stopped\n", stopper
            assert stopped_self.wait(timeout=10) == 124 and stopped_self.timed_out
            assert time.monotonic() - start < 12
            states = {pid: state_of(pid) for pid in non_init(sandbox_pids(dirs))}
            print("states after kill -STOP -1: %s" % states)
            assert "T" in states.values(), "nothing was stopped: the attack did not happen"
            assert sb.run(["echo", "alive"], timeout=10).stdout == "alive\n"
            sibling.kill()
            # Its exit follows the output still buffered for it: read that.
            drain = OutputReader(moatd.socket, sb, sibling)
            drain.start()
            drain.join(10)
            assert sibling.wait(timeout=10) == 128 + 9
            delete_and_check_nothing_left(moatd, sb, dirs, uid_base)
