"""moat-init driven directly over its control socket (src/common/protocol.h).

Runs the built binary from $MOAT_BUILD (default /work/main/build) as a normal
child process (not PID 1: it makes itself a child subreaper), with a listening
unix socket passed as --control-fd. Run: /usr/bin/python3 -m pytest tests/init
"""
import errno
import os
import signal
import socket
import statistics
import struct
import subprocess
import time

import pytest

BUILD = os.environ.get("MOAT_BUILD", "/work/main/build")
# MOAT_INIT picks another build of it (scripts/test.sh: the ASan+UBSan twin).
INIT = os.environ.get("MOAT_INIT") or os.path.join(BUILD, "src/init/moat-init")

HELLO, SPAWN, STDIN, STDIN_CLOSE, SIGNAL, CREDIT, RESIZE = 1, 2, 3, 4, 5, 6, 7
HELLO_ACK, SPAWNED, SPAWN_FAILED, OUTPUT, EXIT, STDIN_CREDIT = 64, 65, 66, 67, 68, 69
STDOUT, STDERR = 1, 2
SPAWN_STDIN, SPAWN_PTY = 1, 2
HEADER = struct.Struct("<IHHII")
INITIAL_CREDIT = 256 * 1024
FRAME_CHARGE = 128  # credit each OUTPUT frame spends beyond its length
CHUNK_MAX = 64 * 1024

pytestmark = pytest.mark.skipif(not os.access(INIT, os.X_OK), reason=f"{INIT} not built")


def encode_spawn(argv, env=(), user="", cwd="", flags=0, rows=0, cols=0):
    strings = [user, cwd, *argv, *env]
    return struct.pack("<IHHII", flags, rows, cols, len(argv), len(env)) + b"".join(
        s.encode() + b"\0" for s in strings)


class Connection:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        for _ in range(500):  # a full backlog answers EAGAIN: init accepts soon
            try:
                self.sock.connect(path)
                break
            except BlockingIOError:
                time.sleep(0.01)
        else:
            raise TimeoutError("init does not accept")

    def close(self):
        self.sock.close()

    def send(self, type_, flags=0, pid=0, aux=0, payload=b""):
        self.sock.sendall(HEADER.pack(len(payload), type_, flags, pid, aux) + payload)

    def _exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("connection closed")
            data += chunk
        return data

    def recv(self, timeout=10):
        self.sock.settimeout(timeout)
        length, type_, flags, pid, aux = HEADER.unpack(self._exact(HEADER.size))
        return type_, flags, pid, aux, self._exact(length) if length else b""

    def hello(self):
        self.send(HELLO, payload=struct.pack("<I", 1))
        type_, _, _, _, payload = self.recv()
        assert type_ == HELLO_ACK
        version, live = struct.unpack("<II", payload)
        assert version == 1
        return live

    next_cookie = 1000

    def spawn(self, argv, cookie=None, **kw):
        """Send SPAWN; return the handle from SPAWNED (the cookie; frames name
        the process by it), or (errno, message) from SPAWN_FAILED. The OS pid
        goes to self.os_pids."""
        if cookie is None:
            Connection.next_cookie += 1
            cookie = Connection.next_cookie
        self.send(SPAWN, aux=cookie, payload=encode_spawn(argv, **kw))
        type_, _, handle, aux, payload = self.recv()
        if type_ == SPAWN_FAILED:
            assert aux == cookie
            return struct.unpack_from("<I", payload)[0], payload[4:].decode()
        assert type_ == SPAWNED
        assert handle == cookie and aux > 0, (handle, aux, cookie)
        self.os_pids = getattr(self, "os_pids", {})
        self.os_pids[handle] = aux
        return handle

    def collect(self, pid, credit=True):
        """Read frames until EXIT of pid; grant back output credit as it arrives."""
        out = {STDOUT: b"", STDERR: b""}
        stdin_credit = 0
        while True:
            type_, flags, fpid, aux, payload = self.recv()
            assert fpid == pid, (type_, fpid, pid)
            if type_ == OUTPUT:
                out[flags] += payload
                if credit:
                    self.send(CREDIT, flags=flags, pid=pid, aux=len(payload) + FRAME_CHARGE)
            elif type_ == STDIN_CREDIT:
                stdin_credit += aux
            elif type_ == EXIT:
                code, sig = struct.unpack("<ii", payload)
                return dict(stdout=out[STDOUT], stderr=out[STDERR], code=code, signal=sig,
                            stdin_credit=stdin_credit)
            else:
                raise AssertionError(f"unexpected frame {type_}")

    def run(self, argv, **kw):
        pid = self.spawn(argv, **kw)
        assert isinstance(pid, int), pid
        return self.collect(pid)


def descendants(pid):
    """All descendants of pid, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except FileNotFoundError:
                continue
            found += kids
            todo += kids
    return found


class Init:
    def __init__(self, tmp_path):
        self.path = str(tmp_path / "control.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        self.log = open(tmp_path / "init.log", "wb")
        self.proc = subprocess.Popen([INIT, "--control-fd", str(listener.fileno())],
                                     pass_fds=[listener.fileno()], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        listener.close()  # init holds its own copy

    def connect(self, hello=True):
        c = Connection(self.path)
        if hello:
            c.hello()
        return c

    def alive(self):
        return self.proc.poll() is None

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self):
        # Spawned processes live in their own sessions: kill them explicitly.
        for pid in descendants(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture
def init(tmp_path):
    i = Init(tmp_path)
    yield i
    assert i.alive(), "moat-init died"
    i.stop()


@pytest.fixture
def conn(init):
    c = init.connect()
    yield c
    c.close()


def test_hello_reports_no_processes(init):
    c = init.connect(hello=False)
    assert c.hello() == 0


def test_echo(conn):
    r = conn.run(["echo", "hello"])
    assert r == dict(stdout=b"hello\n", stderr=b"", code=0, signal=0, stdin_credit=0)


def test_stdout_and_stderr_are_separate(conn):
    r = conn.run(["sh", "-c", "echo out; echo err >&2; exit 42"])
    assert (r["stdout"], r["stderr"], r["code"]) == (b"out\n", b"err\n", 42)


def test_stdin_is_devnull_without_flag(conn):
    assert conn.run(["cat"])["stdout"] == b""


def test_cat_with_stdin(conn):
    pid = conn.spawn(["cat"], flags=SPAWN_STDIN)
    conn.send(STDIN, pid=pid, payload=b"abc")
    conn.send(STDIN, pid=pid, payload=b"def\n")
    conn.send(STDIN_CLOSE, pid=pid)
    r = conn.collect(pid)
    assert (r["stdout"], r["code"], r["stdin_credit"]) == (b"abcdef\n", 0, 7)


def test_stdin_larger_than_pipe_buffer(conn):
    data = bytes(range(256)) * 1024  # 256 KiB: the whole stdin credit at once
    pid = conn.spawn(["sha256sum"], flags=SPAWN_STDIN)
    conn.send(STDIN, pid=pid, payload=data)
    conn.send(STDIN_CLOSE, pid=pid)
    r = conn.collect(pid)
    import hashlib
    assert r["stdout"].split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert r["stdin_credit"] == len(data)


def test_stdin_beyond_credit_closes_connection(init, conn):
    pid = conn.spawn(["sleep", "5"], flags=SPAWN_STDIN)  # never reads stdin
    conn.send(STDIN, pid=pid, payload=b"x" * INITIAL_CREDIT)
    # The pipe buffer takes some; init returns exactly that much credit.
    type_, _, _, returned, _ = conn.recv()
    assert type_ == STDIN_CREDIT and 0 < returned < INITIAL_CREDIT
    conn.send(STDIN, pid=pid, payload=b"y" * (returned + 1))
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            conn.recv()
    assert init.alive()
    c2 = init.connect()
    c2.send(SIGNAL, pid=pid, aux=9)
    assert c2.collect(pid)["signal"] == 9


def test_exit_by_signal(conn):
    r = conn.run(["sh", "-c", "kill -9 $$"])
    assert (r["code"], r["signal"]) == (-1, 9)


def test_signal_frame_reaches_process_group(conn):
    # The shell's child sleep is in the same group: both must die for EXIT to come promptly.
    pid = conn.spawn(["sh", "-c", "sleep 30; echo never"])
    time.sleep(0.1)
    conn.send(SIGNAL, pid=pid, aux=signal.SIGTERM)
    r = conn.collect(pid)
    assert (r["code"], r["signal"], r["stdout"]) == (-1, signal.SIGTERM, b"")


def test_spawn_failed_for_missing_binary(conn):
    err, message = conn.spawn(["python4"], cookie=99)
    assert err == errno.ENOENT
    assert message == "execvp `python4`: No such file or directory"


def test_spawn_failed_for_missing_cwd(conn):
    err, message = conn.spawn(["true"], cwd="/nonexistent-dir")
    assert err == errno.ENOENT and "chdir `/nonexistent-dir`" in message


def test_spawn_failed_for_unknown_user(conn):
    err, message = conn.spawn(["true"], user="no-such-user-xyz")
    assert err == errno.ENOENT and "user `no-such-user-xyz`" in message


def test_invalid_spawn_spec_is_answered(conn):
    conn.send(SPAWN, aux=5, payload=b"\0" * 16)  # argc 0
    type_, _, _, aux, payload = conn.recv()
    assert (type_, aux, struct.unpack_from("<I", payload)[0]) == (SPAWN_FAILED, 5, errno.EINVAL)
    assert conn.run(["true"])["code"] == 0  # the connection is still usable


def test_cwd_and_env(conn, tmp_path):
    r = conn.run(["sh", "-c", 'pwd; echo "$FOO"; echo "$PATH"'], cwd=str(tmp_path), env=["FOO=bar baz"])
    lines = r["stdout"].decode().splitlines()
    assert lines[0] == str(tmp_path)
    assert lines[1] == "bar baz"
    assert "/usr/bin" in lines[2]  # default PATH supplied
    r = conn.run(["env"], env=["PATH=/bin:/usr/bin", "HOME=/x"])
    env = dict(l.split("=", 1) for l in r["stdout"].decode().splitlines())
    assert env["PATH"] == "/bin:/usr/bin" and env["HOME"] == "/x"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_user_switch(conn):
    r = conn.run(["sh", "-c", "id -u; id -g; id -G; echo $HOME"], user="65534")
    uid, gid, groups, home = r["stdout"].decode().split("\n")[:4]
    assert uid == "65534"
    r = conn.run(["sh", "-c", "id -u; id -g"], user="12345:54321")
    assert r["stdout"] == b"12345\n54321\n"
    r = conn.run(["sh", "-c", "id -u; echo $USER; pwd"], user="root")
    assert r["stdout"] == b"0\nroot\n/root\n"


def test_flood_respects_credit_and_order(conn):
    size = 5 * 1024 * 1024
    pattern = bytes(range(251))
    script = ("import sys\n"
              f"p = bytes(range(251)) * 1000\n"
              f"n = {size}\n"
              "while n:\n"
              "    k = min(n, len(p)); sys.stdout.buffer.write(p[:k]); n -= k\n")
    pid = conn.spawn(["/usr/bin/python3", "-c", script])
    granted, received, data = INITIAL_CREDIT, 0, bytearray()
    stalled_once = False
    while True:
        try:
            type_, flags, fpid, aux, payload = conn.recv(timeout=0.2 if not stalled_once else 10)
        except socket.timeout:
            # Credit exhausted: init must have stopped at the credit (less
            # than one frame's charge may be left).
            assert 0 <= granted - received <= FRAME_CHARGE, (granted, received)
            stalled_once = True
            conn.send(CREDIT, flags=STDOUT, pid=pid, aux=128 * 1024)
            granted += 128 * 1024
            continue
        if type_ == EXIT:
            assert struct.unpack("<ii", payload) == (0, 0)
            break
        assert (type_, flags, fpid) == (OUTPUT, STDOUT, pid)
        assert 0 < len(payload) <= CHUNK_MAX
        received += len(payload) + FRAME_CHARGE
        data += payload
        assert received <= granted, "init sent more than its credit"
        if stalled_once and granted - received <= FRAME_CHARGE:
            # Slow grants from here on, 64 KiB at a time.
            conn.send(CREDIT, flags=STDOUT, pid=pid, aux=64 * 1024)
            granted += 64 * 1024
    assert stalled_once
    assert len(data) == size
    assert data == (pattern * (size // 251 + 1))[:size]


def test_exit_not_delayed_by_grandchild_holding_pipe(conn):
    start = time.monotonic()
    r = conn.run(["sh", "-c", "sleep 5 & echo hi"])
    assert r["stdout"] == b"hi\n" and r["code"] == 0
    assert time.monotonic() - start < 2


def test_orphans_are_reaped(init, conn):
    # Double fork: the grandchild is reparented to init (a subreaper here) and
    # exits later; init must reap it without reporting it.
    r = conn.run(["sh", "-c", "(sleep 0.3 >/dev/null 2>&1 &); exit 3"])
    assert r["code"] == 3
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and descendants(init.proc.pid):
        time.sleep(0.05)
    assert descendants(init.proc.pid) == []
    with open(f"/proc/{init.proc.pid}/status") as f:
        assert "State:\tS" in f.read()


def test_reconnect_continues_output(init):
    c = init.connect()
    pid = c.spawn(["sh", "-c", "i=0; while [ $i -lt 40 ]; do echo $i; i=$((i+1)); sleep 0.02; done"])
    first = b""
    while b"5\n" not in first:
        type_, _, _, _, payload = c.recv()
        assert type_ == OUTPUT
        first += payload
    c.close()
    time.sleep(0.2)  # output accumulates in init while nobody is connected
    c2 = init.connect(hello=False)
    assert c2.hello() == 1
    r = c2.collect(pid)
    assert r["code"] == 0
    later = [int(x) for x in r["stdout"].split()]
    assert later[-1] == 39 and later == sorted(later) and later[0] > 5
    c2.close()


def test_new_connection_replaces_old(init):
    c1 = init.connect()
    c2 = init.connect()
    with pytest.raises((EOFError, ConnectionResetError)):
        c1.recv(timeout=5)
    assert c2.run(["true"])["code"] == 0


@pytest.mark.parametrize("bad", [
    b"garbage garbage garbage!",
    HEADER.pack(2 * 1024 * 1024, SPAWN, 0, 0, 0),   # huge length
    HEADER.pack(0, 1234, 0, 0, 0),                  # unknown type
    HEADER.pack(4, OUTPUT, 1, 0, 0) + b"abcd",      # an init->moatd type
], ids=["garbage", "huge", "unknown", "wrong-direction"])
def test_malformed_frames_close_connection_not_init(init, bad):
    c = init.connect()
    c.sock.sendall(bad)
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv(timeout=5)
    assert init.alive()
    c2 = init.connect()
    assert c2.run(["echo", "ok"])["stdout"] == b"ok\n"


def test_frame_before_hello_closes_connection(init):
    c = init.connect(hello=False)
    c.send(SPAWN, aux=1, payload=encode_spawn(["true"]))
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv(timeout=5)
    assert init.connect().run(["true"])["code"] == 0


def test_pty(conn):
    pid = conn.spawn(["sh", "-c", "tty; stty size; read x; echo got $x"], flags=SPAWN_PTY, rows=33, cols=101)
    conn.send(STDIN, pid=pid, payload=b"hi\n")
    r = conn.collect(pid)
    out = r["stdout"].replace(b"\r", b"").decode()
    assert "/dev/pts/" in out  # the terminal echoes "hi" too
    assert "33 101\n" in out and "got hi" in out and r["code"] == 0


def test_pty_resize(conn):
    pid = conn.spawn(["sh", "-c", "read x; stty size"], flags=SPAWN_PTY, rows=10, cols=20)
    conn.send(RESIZE, pid=pid, aux=50 << 16 | 132)
    conn.send(STDIN, pid=pid, payload=b"\n")
    r = conn.collect(pid)
    assert b"50 132" in r["stdout"]


def test_process_limit(conn):
    pids = []
    for _ in range(1024):
        pids.append(conn.spawn(["sleep", "30"]))
    assert conn.spawn(["true"]) [0] == errno.EAGAIN
    for pid in pids:
        conn.send(SIGNAL, pid=pid, aux=9)
    exited = 0
    while exited < len(pids):
        if conn.recv()[0] == EXIT:
            exited += 1


def test_many_spawns_no_fd_leak_and_round_trip(init, conn):
    conn.run(["true"])
    before = init.fd_count()
    samples = []
    for i in range(1000):
        t0 = time.perf_counter()
        r = conn.run(["/bin/true"])
        samples.append(time.perf_counter() - t0)
        assert r["code"] == 0
    assert init.fd_count() == before
    median_ms = statistics.median(samples[:200]) * 1000
    print(f"\nspawn round trip (/bin/true, SPAWN -> EXIT), median of 200: {median_ms:.3f} ms")
    with open(os.path.join(os.path.dirname(init.path), "..", "spawn_rtt.txt"), "w") as f:
        f.write(f"{median_ms:.3f}\n")


def test_spawn_cookie_must_be_a_fresh_handle(conn):
    handle = conn.spawn(["sleep", "30"])
    err, message = conn.spawn(["true"], cookie=handle)
    assert err == errno.EEXIST, message
    err, message = conn.spawn(["true"], cookie=0)
    assert err == errno.EINVAL, message
    conn.send(SIGNAL, pid=handle, aux=9)
    assert conn.collect(handle)["signal"] == 9


def test_frames_name_the_handle_not_a_reused_pid(conn):
    # A process that exited with unsent output keeps its slot; a new process
    # may get the same pid. Every frame must still name the right process.
    first = conn.spawn(["sh", "-c", "head -c 400000 /dev/zero"])  # more than its credit
    first_pid = conn.os_pids[first]
    time.sleep(0.3)  # it blocks on credit; make it exit by reading it all
    r = conn.collect(first)
    assert len(r["stdout"]) == 400000 and r["code"] == 0
    second = conn.spawn(["echo", "second"])
    assert second != first
    r = conn.collect(second)
    assert r["stdout"] == b"second\n"
    assert first_pid > 0


def test_random_frames_never_kill_init(init):
    import random
    rng = random.Random(1234)
    valid = HEADER.pack(4, HELLO, 0, 0, 0) + struct.pack("<I", 1)
    for _ in range(150):
        c = init.connect(hello=False)
        blob = bytearray(valid + HEADER.pack(len(encode_spawn(["true"])), SPAWN, 0, 0, 1) + encode_spawn(["true"]))
        for _ in range(rng.randint(1, 6)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        blob += bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        try:
            c.sock.sendall(bytes(blob))
        except OSError:
            pass
        c.close()
    assert init.alive()
    # Frames queued for the dead connections (answers to their spawns) are
    # delivered to the next one, which ignores cookies and pids it does not know.
    c = init.connect()
    c.send(SPAWN, aux=4242, payload=encode_spawn(["echo", "alive"]))
    pid, out = None, b""
    while True:
        type_, _, fpid, aux, payload = c.recv()
        if type_ == SPAWNED and fpid == 4242:  # handle = the cookie; aux = OS pid
            pid = fpid
        elif pid is not None and fpid == pid and type_ == OUTPUT:
            out += payload
        elif pid is not None and fpid == pid and type_ == EXIT:
            break
    assert out == b"alive\n"


def test_stdout_closed_early_then_exit(conn):
    r = conn.run(["sh", "-c", "echo a; exec >&-; sleep 0.2; echo b >&2; exit 5"])
    assert (r["stdout"], r["stderr"], r["code"]) == (b"a\n", b"b\n", 5)
