"""The files API under attack: a hostile workload plants symlinks, magic
links, hostile names and swap races, and every file endpoint (content read
and write, stat, list, mkdir, remove, move, chmod, archive download and
upload, watch) plus the volumes' outside-access endpoints are driven
through them.

The host side is a sentinel directory (a temp dir holding a unique secret)
watched with inotify for the whole attack: any open, read, write, listing,
chmod, creation, removal or move of it by moatd shows up as an event, and
its contents are compared before and after. Every sandbox also gets decoys
at the same path names, so a resolution that stays inside finds something.

tests/e2e/test_files.py covers the basic hostile paths and a 2000-iteration
write/read race; this goes through every endpoint, with RENAME_EXCHANGE
swaps (directory <-> symlink atomically, no window where the name is
missing) and a volume race.
"""

import ctypes
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
import threading
import time
import urllib.parse

import pytest

import attack
import moat
from moatd_harness import http_request, raw_request

SECRET = "HOST-SENTINEL-%s" % os.urandom(8).hex()
DECOY = "SANDBOX-DECOY"
RACE_SECONDS = 20          # per race test; the module stays well under 120 s
IN_ALL_EVENTS = 0xFFF
IN_NONBLOCK = 0o4000


# --- the host sentinel ------------------------------------------------------------

class Sentinel:
    """A host directory with a secret, a subdirectory and a victim file,
    watched with inotify (every event counts as a hit)."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="moat-sec-sentinel-")
        os.mkdir(os.path.join(self.path, "sub"))
        for name in ("secret", "victim", "a", "sub/secret"):
            with open(os.path.join(self.path, name), "w") as f:
                f.write(SECRET)
        os.chmod(os.path.join(self.path, "secret"), 0o640)
        self.before = self.snapshot()
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK)
        assert self.fd >= 0
        for target in (self.path, os.path.join(self.path, "sub"), os.path.join(self.path, "secret")):
            assert self.libc.inotify_add_watch(self.fd, target.encode(), IN_ALL_EVENTS) >= 0

    def snapshot(self):
        state = {}
        for root, dirs, files in os.walk(self.path):
            for name in dirs + files:
                full = os.path.join(root, name)
                st = os.lstat(full)
                data = open(full, "rb").read() if os.path.isfile(full) else None
                state[os.path.relpath(full, self.path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                                           st.st_mtime_ns, st.st_ino, data)
        return state

    def events(self):
        """inotify events so far: [(mask, name)]."""
        out = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            offset = 0
            while offset < len(data):
                wd, mask, cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
                out.append((hex(mask), name))
                offset += 16 + length

    def check(self):
        """Assert the sentinel was never touched (call once, at the end)."""
        events = self.events()
        assert events == [], "moatd touched the host sentinel %s: %s" % (self.path, events[:20])
        assert self.snapshot() == self.before, "the host sentinel changed"

    def close(self):
        os.close(self.fd)
        shutil.rmtree(self.path)


@pytest.fixture
def sentinel():
    s = Sentinel()
    try:
        yield s
    finally:
        s.close()


def run(sb, script, *args, timeout=60):
    result = sb.run(["python3", "-c", script] + [str(a) for a in args], timeout=timeout)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def no_secret(value):
    blob = value if isinstance(value, (bytes, bytearray)) else json.dumps(value, default=str).encode()
    assert SECRET.encode() not in blob, "a response carried the host secret"


# The sandbox's decoys and traps. argv: the host sentinel path.
_PLANT = r'''
import os, sys
host = sys.argv[1]
def mk(path, text=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if text is not None:
        open(path, "w").write(text)
# Decoys at the host path, so a path that stays inside finds these.
for name in ("secret", "victim", "a", "sub/secret"):
    mk(host + "/" + name, "SANDBOX-DECOY")
mk("/tmp/t/real/secret", "SANDBOX-DECOY")
links = {
    "/tmp/t/abs": host,                                  # absolute, to the host path
    "/tmp/t/rel": "../../.." + "/.." * 40 + host,         # relative, climbing out
    "/tmp/t/abs-file": host + "/secret",
    "/tmp/t/shadow": "/etc/shadow",
    "/tmp/t/p1root": "/proc/1/root",
    "/tmp/t/pselfroot": "/proc/self/root",
    "/tmp/t/p1cwd": "/proc/1/cwd",
    "/tmp/t/pselffd": "/proc/self/fd",
    "/tmp/t/p1fd3": "/proc/1/fd/3",
    "/tmp/t/p1host": "/proc/1/root" + host,
    "/tmp/t/loop": "/tmp/t/loop",
    "/tmp/t/mid": "/tmp/t/abs",                          # a chain of links
    "/tmp/t/sys": "/sys/kernel",
    "/tmp/t/procsys": "/proc/sys/kernel",
}
for link, target in links.items():
    os.symlink(target, link)
print("planted")
'''


def attack_paths(host):
    """Paths every endpoint is driven through: (label, path)."""
    return [
        ("dotdot", "/" + "../" * 60 + host.lstrip("/") + "/secret"),
        ("dotdot-mid", "/tmp/t/real/" + "../" * 60 + host.lstrip("/") + "/secret"),
        ("abs-link-dir", "/tmp/t/abs/secret"),
        ("rel-link-dir", "/tmp/t/rel/secret"),
        ("abs-link-file", "/tmp/t/abs-file"),
        ("chain", "/tmp/t/mid/secret"),
        ("chain-sub", "/tmp/t/mid/sub/secret"),
        ("proc1-root", "/proc/1/root" + host + "/secret"),
        ("procself-root", "/proc/self/root" + host + "/secret"),
        ("link-to-proc1root", "/tmp/t/p1root" + host + "/secret"),
        ("link-to-selfroot", "/tmp/t/pselfroot" + host + "/secret"),
        ("link-p1host", "/tmp/t/p1host/secret"),
        ("proc1-cwd", "/proc/1/cwd" + host + "/secret"),
        ("procself-fd", "/proc/self/fd/3/secret"),
        ("proc1-fd", "/proc/1/fd/3"),
        ("link-p1fd", "/tmp/t/p1fd3"),
        ("proc1-mapfiles", "/proc/1/map_files"),
        ("loop", "/tmp/t/loop/x"),
        ("long", "/tmp/t/real/" + "x" * 255 + "/" + "../" * 1200 + host.lstrip("/") + "/secret"),
        ("long-dotdot", "/tmp/t/real" + "/." * 2000 + "/secret"),
    ]


# --- every endpoint through every hostile path ---------------------------------------

def _status(call):
    try:
        value = call()
        return "ok", value
    except moat.Error as e:
        return e.code or type(e).__name__, None


def _tar(entries):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = value.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, value
                tar.addfile(info)
            else:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
    return buffer.getvalue()


def test_every_endpoint_through_every_hostile_path_stays_inside(moatd, sandbox, sentinel):
    """Attack: drive read, write (one-shot, chunked and append), stat, list
    (depth 16), mkdir, remove (recursive), move (both ends), chmod, archive
    download and upload, and watch through `..` chains, absolute and
    relative symlinks to the host path, symlinked intermediate directories
    and link chains, /proc/1/root, /proc/self/root, /proc/1/cwd,
    /proc/self/fd/N, /proc/1/fd/N (directly and via planted links), a
    symlink loop and 4 KiB paths.
    Bound: the host sentinel gets zero inotify events (never opened, read,
    listed, written, chmod'ed, removed or moved) and is byte-for-byte
    unchanged; no response body carries its secret; every call answers (an
    error code or a result inside the sandbox) and moatd stays healthy."""
    host = sentinel.path
    assert run(sandbox, _PLANT, host).strip() == "planted"
    files = sandbox.files
    outcomes = {}
    paths = attack_paths(host)
    with attack.responsive(moatd):
        for label, path in paths:
            parent = path.rsplit("/", 1)[0] or "/"
            ops = {
                "read": lambda: files.read(path),
                "stat": lambda: files.stat(path),
                "list": lambda: files.list(path, depth=16),
                "list-parent": lambda: files.list(parent, depth=16),
                "archive-get": lambda: _read_archive(files, parent),
                "write": lambda: files.write(path, "pwned-" + label),
                "write-new": lambda: files.write(parent + "/planted-" + label, "pwned"),
                "write-chunked": lambda: files.write(parent + "/chunked-" + label, b"p" * 3000, chunk_size=1000),
                "append": lambda: moatd.client().request(
                    "PUT", "/v1/sandboxes/%s/files/content" % sandbox.id, raw_body=b"pwned",
                    query={"path": path, "append": "1"}),
                "mkdir": lambda: files.mkdir(parent + "/newdir-" + label, parents=True),
                "chmod": lambda: files.chmod(path, 0o777),
                "chmod-parent": lambda: files.chmod(parent, 0o777),
                "move-from": lambda: files.move(parent + "/victim", "/tmp/moved-" + label),
                "move-to": lambda: files.move("/tmp/t/real/secret", parent + "/moved-in-" + label, overwrite=True),
                "archive-put": lambda: moatd.client().request(
                    "PUT", "/v1/sandboxes/%s/files/archive" % sandbox.id,
                    raw_body=_tar([("extracted-" + label, "file", "pwned")]), query={"path": parent}),
                "remove": lambda: files.remove(path),
                "remove-recursive": lambda: files.remove(parent, recursive=True),
                "watch": lambda: files.watch(parent).close(),
            }
            for op, call in ops.items():
                code, value = _status(call)
                if value is not None:
                    no_secret(value)
                outcomes.setdefault(op, {}).setdefault(code, 0)
                outcomes[op][code] += 1
            # Put back what a removal inside the sandbox took, for the next path.
            assert sandbox.run(["rm", "-rf", "/tmp/t"]).exit_code == 0
            run(sandbox, _PLANT, host)
    print("\nendpoint outcomes: %s" % json.dumps(outcomes, sort_keys=True))
    moatd.healthy(timeout=5)
    sentinel.check()


def _read_archive(files, path):
    conn, resp = files._get_stream("/archive", {"path": path})
    try:
        return resp.read()
    finally:
        resp.close()
        conn.close()


# --- raw bytes in paths -------------------------------------------------------------

def test_nul_control_and_non_utf8_bytes_in_paths(moatd, sandbox, sentinel):
    """Attack: NUL (raw and %00), control bytes (\\n \\r \\t \\x01 \\x7f \\x1b),
    non-UTF-8 (%ff%fe, overlong %c0%af for "/"), lone surrogates and \\u0000
    in JSON, a NUL that would truncate a C string to the host path, and a
    4097-byte path, through query strings and JSON bodies of every endpoint.
    Bound: each request is answered within 10 s with a 4xx or with an
    operation inside the sandbox (a strange but legal name); NUL and
    over-long paths are 400; the sentinel is untouched; moatd stays up."""
    host = sentinel.path
    run(sandbox, _PLANT, host)
    base = "/v1/sandboxes/%s/files" % sandbox.id
    hostq = urllib.parse.quote(host)
    raw_paths = [
        "/tmp/t/abs%00/secret", hostq + "/secret%00.txt", "%2e%2e/%2e%2e" + hostq + "/secret",
        "/tmp/t/real/a%0ab", "/tmp/t/real/a%0d%0aX-Injected:%201", "/tmp/t/real/%01%7f%1b[31m",
        "/tmp/t/real/" + "a" * 4097, "", "%00", "/%00" + hostq,
    ]
    statuses = {}
    with attack.responsive(moatd):
        for p in raw_paths:
            for method, route, body in (("GET", "/content?path=", None), ("GET", "/stat?path=", None),
                                        ("GET", "/list?path=", None), ("GET", "/archive?path=", None),
                                        ("PUT", "/content?path=", b"pwned"),
                                        ("PUT", "/content?append=1&path=", b"pwned"),
                                        ("PUT", "/archive?path=", _tar([("x", "file", "pwned")]))):
                status, _, data = raw_request(moatd.socket, http_request(method, base + route + p, body), 10)
                statuses[(method, route, p[:20])] = status
                no_secret(data)
                if "%00" in p or len(p) > 4096:
                    assert status == 400, (method, route, p, status, data[:200])
        for bad in ("/tmp/t/abs\u0000/secret", host + "\u0000", "/tmp/t/real/\ud800", "/tmp/t/real/\x01\x7f",
                    "/tmp/t/real/" + "a" * 4097):
            for op, body in (("mkdir", {"path": bad, "parents": True}), ("remove", {"path": bad, "recursive": True}),
                             ("chmod", {"path": bad, "mode": "0777"}),
                             ("move", {"from": bad, "to": "/tmp/t/real/moved"}),
                             ("move", {"from": "/tmp/t/real/secret", "to": bad})):
                if True:
                    payload = json.dumps(body).encode()
                    status, _, data = raw_request(moatd.socket, http_request("POST", base + "/" + op, payload), 10)
                    no_secret(data)
                    if "\u0000" in bad or len(bad) > 4096:
                        assert status == 400, (op, bad[:40], status, data[:200])
                    assert status < 500, (op, bad[:40], status, data[:200])
    print("\nraw path statuses: %s" % sorted(set(statuses.values())))
    assert not [k for k, s in statuses.items() if s >= 500], statuses
    moatd.healthy(timeout=5)
    sentinel.check()


# --- /proc and /sys through the API -------------------------------------------------

def test_proc_and_sys_paths_grant_nothing_the_workload_lacks(moatd, sandbox):
    """Attack: use moatd (host root) as a confused deputy on the sandbox's
    /proc and /sys: write host-global kernel knobs (/proc/sys/kernel/
    core_pattern, modprobe; /sys/kernel/uevent_helper) by direct path and
    through planted symlinked directories, with replace and append writes
    (each writes back the host's current value, so even a hit is harmless),
    chmod them, remove/move them, and read files whose content depends on
    the reader's host privileges (/proc/kallsyms addresses, /proc/1/stack).
    Bound: every write, chmod, remove and move is refused and the host
    values are unchanged; a read returns nothing the workload itself cannot
    read (kallsyms through the API equals kallsyms read inside)."""
    run(sandbox, _PLANT, "/nonexistent-host-path")
    files = sandbox.files
    knobs = {"/proc/sys/kernel/core_pattern": None, "/proc/sys/kernel/modprobe": None,
             "/sys/kernel/uevent_helper": None}
    for knob in knobs:
        try:
            with open(knob, "rb") as f:
                knobs[knob] = f.read()
        except OSError:
            knobs[knob] = None
    knobs = {k: v for k, v in knobs.items() if v is not None}
    refused = {}
    for knob, value in knobs.items():
        for path in (knob, knob.replace("/proc/sys/kernel", "/tmp/t/procsys").replace("/sys/kernel", "/tmp/t/sys")):
            results = [
                _status(lambda: files.write(path, value)),
                _status(lambda: moatd.client().request("PUT", "/v1/sandboxes/%s/files/content" % sandbox.id,
                                                       raw_body=value, query={"path": path, "append": "1"})),
                _status(lambda: files.chmod(path, 0o666)),
                _status(lambda: files.move(path, "/tmp/moved-knob")),
                _status(lambda: files.remove(path)),
            ]
            refused[path] = [code for code, _ in results]
            assert all(code != "ok" for code, _ in results), (path, results)
    for knob, value in knobs.items():
        with open(knob, "rb") as f:
            assert f.read() == value, knob
        assert oct(os.stat(knob).st_mode & 0o777) != "0o666", knob
    print("\nknob outcomes: %s" % refused)


def test_proc_reads_reveal_nothing_the_workload_cannot_read(moatd, sandbox):
    """Attack: use moatd (host root) as a confused deputy to read /proc
    files whose content depends on the opener's host privileges:
    /proc/kallsyms (real addresses need CAP_SYSLOG in the init namespace),
    /proc/1/stack (CAP_SYS_ADMIN), /proc/1/syscall and /proc/1/maps of the
    non-dumpable init. An agent asking its framework to "read a file"
    would get a KASLR bypass.
    Bound: the files API returns nothing the workload itself cannot read:
    kallsyms addresses equal those read inside (zeros), and the others are
    refused through the API exactly when they are refused inside."""
    files = sandbox.files
    inside = sandbox.run(["sh", "-c", "head -c 4096 /proc/kallsyms"]).stdout
    try:
        through_api = files.read("/proc/kallsyms", length=4096).decode()
    except moat.Error as e:
        through_api = "refused " + e.code
    if not through_api.startswith("refused"):
        inside_addresses = {line.split()[0] for line in inside.splitlines() if line.strip()}
        api_addresses = {line.split()[0] for line in through_api.splitlines() if line.strip()}
        assert api_addresses <= inside_addresses | {"0000000000000000"}, \
            "the files API reads /proc/kallsyms with host privileges: real kernel addresses %s" % \
            sorted(api_addresses - inside_addresses)[:3]
    for path in ("/proc/1/stack", "/proc/1/syscall", "/proc/1/maps"):
        denied_inside = sandbox.run(["sh", "-c", "cat %s > /dev/null" % path]).exit_code != 0
        try:
            through_api = files.read(path)
        except moat.Error:
            through_api = None
        assert not (denied_inside and through_api), \
            "the files API read %s, which the workload is denied: %r" % (path, through_api[:120])


def test_device_nodes_and_fifos_are_not_files_to_the_api(moatd, sandbox):
    """Attack: the sandbox's /dev/null is a bind of the host's own node, so a
    chmod through moatd (host root) would change the host's /dev/null; a FIFO
    planted by the workload would block moatd's loop on an append; a tty
    node opened by moatd could become its terminal. Bound: chmod and append
    of device nodes and FIFOs are refused with 409 not_a_regular_file within
    5 s, the host's /dev/null keeps its mode, and moatd stays healthy."""
    host_mode = os.stat("/dev/null").st_mode
    assert sandbox.run(["mkfifo", "/tmp/fifo"]).exit_code == 0
    files = sandbox.files
    with attack.responsive(moatd):
        for path in ("/dev/null", "/dev/zero", "/dev/tty", "/tmp/fifo"):
            start = time.monotonic()
            with pytest.raises(moat.Error) as chmod:
                files.chmod(path, 0o777)
            assert chmod.value.code == "not_a_regular_file", (path, chmod.value)
            status, _, body = raw_request(moatd.socket, http_request(
                "PUT", "/v1/sandboxes/%s/files/content?append=1&path=%s" % (sandbox.id, path), body=b"x"))
            assert status == 409 and b"not_a_regular_file" in body, (path, status, body[:200])
            assert time.monotonic() - start < 5, path
    assert os.stat("/dev/null").st_mode == host_mode


def test_kernel_filesystems_are_refused_as_a_whole(moatd, sandbox):
    """Attack: list, stat, read, archive /proc and /sys through moatd, hoping
    for host-credential answers. Bound: every path on a kernel filesystem is
    409 kernel_filesystem; a recursive list or archive of / names /proc and
    /sys but never descends into them."""
    files = sandbox.files
    # (/proc itself is the sandbox's mount point, on its root filesystem: a stat of it shows a directory)
    for path in ("/proc/1/status", "/proc/1/environ", "/sys/kernel", "/proc/sys/kernel/core_pattern",
                 "/proc/kallsyms"):
        with pytest.raises(moat.Error) as refused:
            files.stat(path)
        assert refused.value.code == "kernel_filesystem", (path, refused.value)
    listed = [entry["path"] for entry in files.list("/", depth=2)]
    assert "/proc" in listed and "/sys" in listed, listed[:20]
    assert not any(p.startswith("/proc/") or p.startswith("/sys/") for p in listed), \
        [p for p in listed if p.startswith(("/proc/", "/sys/"))][:5]


def test_non_utf8_path_is_a_clean_error(moatd, sandbox):
    """Attack: a non-UTF-8 path (%ff%fe, overlong %c0%af) in the write and
    archive-upload query strings. Bound: a 4xx JSON error (or a 2xx whose
    JSON reply names the file); never a 500, and never a file created while
    the reply says the request failed."""
    sandbox.run(["mkdir", "-p", "/tmp/t/real"])
    base = "/v1/sandboxes/%s/files" % sandbox.id
    for method, route, body in (("PUT", "/content?path=/tmp/t/real/%ff%fe", b"x"),
                                ("PUT", "/content?append=1&path=/tmp/t/real/%fe%ff", b"x"),
                                ("PUT", "/archive?path=/tmp/t/real/%c0%af", _tar([("x", "file", "y")]))):
        status, _, data = raw_request(moatd.socket, http_request(method, base + route, body), 10)
        assert status < 500, (route, status, data[:200])
        if status >= 400:
            assert json.loads(data)["error"]["code"], data


# --- symlink-swap races -------------------------------------------------------------

# Swaps /tmp/race/d (a real directory holding decoys) and /tmp/race/l (a
# symlink to the host path) with renameat2(RENAME_EXCHANGE) in a tight loop:
# at every instant /tmp/race/d exists, as a directory or as the symlink.
_SWAPPER = r'''
import ctypes, os, sys
host, root = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs(root + "/d/sub", exist_ok=True)
for name in ("secret", "victim", "a", "sub/secret"):
    open(root + "/d/" + name, "w").write("SANDBOX-DECOY")
if not os.path.lexists(root + "/l"):
    os.symlink(host, root + "/l")
a, b = (root + "/d").encode(), (root + "/l").encode()
print("ready", flush=True)
n = 0
while True:
    if libc.renameat2(-100, a, -100, b, 2) != 0:
        raise SystemExit("renameat2: errno %d" % ctypes.get_errno())
    n += 1
    if n % 512 == 0:
        # Keep the decoys present whatever the API removed or moved.
        real = root + "/d" if not os.path.islink(root + "/d") else root + "/l"
        for name in ("secret", "victim", "a"):
            p = real + "/" + name
            if not os.path.lexists(p):
                try:
                    open(p, "w").write("SANDBOX-DECOY")
                except OSError:
                    pass
'''


def _hammer(sandbox, moatd, root, stop, counts, errors, worker):
    files = sandbox.files
    client = moatd.client()
    base = "/v1/sandboxes/%s/files" % sandbox.id
    d = root + "/d"
    i = 0
    ops = [
        ("write", lambda: files.write(d + "/planted-%d" % (i % 7), "pwned")),
        ("overwrite", lambda: files.write(d + "/secret", DECOY)),
        ("chunked", lambda: files.write(d + "/chunked", b"c" * 2048, chunk_size=1024)),
        ("append", lambda: client.request("PUT", base + "/content", raw_body=b"+",
                                          query={"path": d + "/victim", "append": "1"})),
        ("read", lambda: files.read(d + "/secret")),
        ("read-sub", lambda: files.read(d + "/sub/secret")),
        ("stat", lambda: files.stat(d + "/secret")),
        ("list", lambda: files.list(d, depth=3)),
        ("mkdir", lambda: files.mkdir(d + "/newdir-%d" % (i % 5), parents=True)),
        ("move", lambda: files.move(d + "/a", d + "/a", overwrite=True)),
        ("move-out", lambda: files.move(d + "/victim", root + "/moved-%d" % worker, overwrite=True)),
        ("chmod", lambda: files.chmod(d + "/secret", 0o600 if i % 2 else 0o644)),
        ("chmod-dir", lambda: files.chmod(d + "/sub", 0o700 if i % 2 else 0o755)),
        ("remove", lambda: files.remove(d + "/planted-%d" % ((i + 3) % 7))),
        ("remove-rec", lambda: files.remove(d + "/newdir-%d" % ((i + 2) % 5), recursive=True)),
        ("archive-get", lambda: _read_archive(files, d)),
        ("archive-put", lambda: client.request("PUT", base + "/archive", raw_body=_tar(
            [("sub", "dir", None), ("sub/extracted", "file", "pwned")]), query={"path": d})),
    ]
    while not stop.is_set():
        op, call = ops[i % len(ops)]
        try:
            value = call()
            if value is not None:
                no_secret(value)
            counts[op + ":ok"] = counts.get(op + ":ok", 0) + 1
        except moat.Error as e:
            counts[op + ":" + (e.code or "error")] = counts.get(op + ":" + (e.code or "error"), 0) + 1
        except AssertionError as e:
            errors.append("%s: %s" % (op, e))
        i += 1


def test_symlink_exchange_race_on_every_endpoint(moatd, sandbox, sentinel):
    """Attack: TOCTOU. Inside, /tmp/race/d is atomically exchanged
    (renameat2 RENAME_EXCHANGE) with a symlink to the host sentinel's path,
    as fast as python can, while three client threads hammer write,
    chunked write, append, read, stat, list, mkdir, move, chmod, remove,
    recursive remove, archive download and archive upload on paths under
    /tmp/race/d, for RACE_SECONDS (thousands of calls; the count is
    asserted).
    Bound: zero hits - no inotify event on the host sentinel, its bytes,
    modes and inodes unchanged, no response containing its secret - and the
    swapper was still swapping at the end (the race really ran)."""
    host = sentinel.path
    swapper = sandbox.exec("python3", "-c", _SWAPPER, host, "/tmp/race", stdin=False)
    try:
        deadline = time.monotonic() + 15
        while not sandbox.files.exists("/tmp/race/l") and time.monotonic() < deadline:
            time.sleep(0.05)
        stop = threading.Event()
        counts = [{} for _ in range(3)]
        errors = []
        threads = [threading.Thread(target=_hammer, args=(sandbox, moatd, "/tmp/race", stop, counts[w], errors, w))
                   for w in range(3)]
        with attack.responsive(moatd):
            for t in threads:
                t.start()
            time.sleep(RACE_SECONDS)
            stop.set()
            for t in threads:
                t.join(60)
        assert swapper.poll() is None, "the swapper died: the race did not run"
        swaps = sandbox.run(["sh", "-c", "test -L /tmp/race/d && echo link || echo dir"]).stdout
        assert swaps.strip() in ("link", "dir")
    finally:
        swapper.kill()
    total = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    calls = sum(total.values())
    print("\nrace: %d calls %s" % (calls, json.dumps(total, sort_keys=True)))
    assert not errors, errors[:5]
    assert calls >= 2000, "too few racing calls to mean anything: %d" % calls
    # The race was a race: operations both succeeded (inside) and failed.
    assert any(k.endswith(":ok") for k in total)
    sentinel.check()


# --- watch ----------------------------------------------------------------------

def test_watch_through_a_symlink_never_watches_the_host(moatd, sandbox, sentinel):
    """Attack: watch (recursive) a planted symlink to a host directory, a
    path through /proc/1/root and /proc/self/root, and a directory that is
    swapped for a host symlink right after the watch starts; then the host
    directory changes. Bound: no event names a host change (the host file
    created during the watch never appears), the sentinel gets no inotify
    event from moatd, and each watch is refused or ends."""
    host = sentinel.path
    run(sandbox, _PLANT, host)
    other = tempfile.mkdtemp(prefix="moat-sec-watched-")
    try:
        run(sandbox, "import os,sys\nos.makedirs(sys.argv[1], exist_ok=True)\nos.symlink(sys.argv[1], '/tmp/t/other')",
            other)
        watches = []
        for path in ("/tmp/t/abs", "/tmp/t/rel", "/tmp/t/mid", "/tmp/t/other", "/proc/1/root" + other,
                     "/proc/self/root" + other, "/tmp/t/p1root" + other):
            try:
                watches.append((path, sandbox.files.watch(path, recursive=True)))
            except moat.Error as e:
                print("watch %s: %s" % (path, e.code))
        # Swap: a watched real directory becomes a symlink to the host dir.
        sandbox.files.mkdir("/tmp/t/swapme")
        watches.append(("swapme", sandbox.files.watch("/tmp/t/swapme", recursive=True)))
        run(sandbox, "import os,sys\nos.rename('/tmp/t/swapme', '/tmp/t/gone')\nos.symlink(sys.argv[1], '/tmp/t/swapme')",
            other)
        marker = "host-change-%s" % os.urandom(4).hex()
        with open(os.path.join(other, marker), "w") as f:
            f.write("x")
        # A sandbox change inside the decoy dir, so a watch that stays inside has something to report.
        run(sandbox, "import sys\nopen(sys.argv[1] + '/inside-change', 'w').write('x')", other)
        seen = []
        time.sleep(1)
        for _, w in watches:
            # Read what each watch has, for at most ~1 s (a watch stream never ends by itself).
            try:
                w._stream._conn.sock.settimeout(1)
                for event in w:
                    seen.append(event)
            except (moat.Error, OSError, ValueError, AttributeError):
                pass
            finally:
                try:
                    w.close()
                except (moat.Error, OSError):
                    pass
        print("watch events: %s" % [(e.get("type"), e.get("path")) for e in seen][:20])
        assert not any(marker in json.dumps(e) for e in seen), "a watch reported a host change: %s" % seen
    finally:
        shutil.rmtree(other)
    sentinel.check()


# --- volumes ---------------------------------------------------------------------

_VOLUME_PLANT = r'''
import os, shutil, sys
host = sys.argv[1]
os.makedirs("/data" + host + "/sub", exist_ok=True)
for name in ("secret", "victim", "a", "sub/secret"):
    open("/data" + host + "/" + name, "w").write("SANDBOX-DECOY")
links = {"abs": host, "rel": "../../.." + "/.." * 40 + host, "file": host + "/secret",
         "pself": "/proc/self/root" + host, "p1": "/proc/1/root" + host, "chain": "/abs",
         "loop": "/loop", "etc": "/etc", "race/l": host}
os.makedirs("/data/race/d", exist_ok=True)
open("/data/race/d/secret", "w").write("SANDBOX-DECOY")
for name, target in links.items():
    path = "/data/" + name
    if os.path.islink(path) and os.readlink(path) == target:
        continue
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)
'''


@pytest.fixture
def volume(moatd):
    name = "sec-%s" % os.urandom(4).hex()
    try:
        vol = moat.Volume.create(name, size_mib=64, socket=moatd.socket)
    except moat.Error as e:
        pytest.skip("volumes unavailable here: %s" % e)
    try:
        yield vol
    finally:
        moat.Volume.delete(name, socket=moatd.socket)


def test_volume_symlinks_lead_nowhere_from_outside(moatd, volume, sentinel):
    """Attack: a sandbox mounting a volume plants links in it to the host
    (absolute, relative climbing out, to a host file, /proc/self/root,
    /proc/1/root, a chain, a loop) and a directory that it swaps with a
    host symlink (RENAME_EXCHANGE) in a tight loop; the volume's outside
    endpoints (read, write, list, remove, recursive remove) are driven
    through them, and through `..`, NUL and 4 KiB paths.
    Bound: the sentinel gets zero inotify events and is unchanged; no
    response carries its secret; a write or remove at a planted link acts
    on the link itself (the link is replaced/removed, the target kept)."""
    host = sentinel.path
    sb = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": volume})
    try:
        run(sb, _VOLUME_PLANT, host)
        paths = ["/abs/secret", "/rel/secret", "/file", "/pself/secret", "/p1/secret", "/chain/secret",
                 "/chain/sub/secret", "/loop/x", "/" + "../" * 50 + host.lstrip("/") + "/secret",
                 "/etc/shadow", "/x/" * 1300 + "y", "/abs/../abs/secret"]
        outcomes = {}
        for path in paths:
            run(sb, _VOLUME_PLANT, host)
            parent = path.rsplit("/", 1)[0] or "/"
            for op, call in (("read", lambda: volume.read_file(path)), ("list", lambda: volume.listdir(parent)),
                             ("list-path", lambda: volume.listdir(path)),
                             ("write", lambda: volume.write_file(path, "pwned")),
                             ("write-new", lambda: volume.write_file(parent + "/planted", "pwned")),
                             ("remove", lambda: volume.remove(path)),
                             ("remove-rec", lambda: volume.remove(parent, recursive=True))):
                code, value = _status(call)
                if value is not None:
                    no_secret(value)
                outcomes.setdefault(op, {}).setdefault(code, 0)
                outcomes[op][code] += 1
        for bad in ("/abs%00/secret", urllib.parse.quote(host) + "%00"):
            status, _, data = raw_request(moatd.socket, http_request(
                "GET", "/v1/volumes/%s/files/content?path=%s" % (volume.name, bad)), 10)
            assert status == 400, (bad, status, data[:200])
        print("\nvolume outcomes: %s" % json.dumps(outcomes, sort_keys=True))
        # The race: the sandbox swaps /data/race/d with a link to the host path.
        swapper = sb.exec("python3", "-c", r'''
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
while True:
    libc.renameat2(-100, b"/data/race/d", -100, b"/data/race/l", 2)
''', stdin=False)
        try:
            time.sleep(0.3)
            calls = 0
            deadline = time.monotonic() + 10
            with attack.responsive(moatd):
                while time.monotonic() < deadline:
                    for call in (lambda: volume.read_file("/race/d/secret"), lambda: volume.listdir("/race/d"),
                                 lambda: volume.write_file("/race/d/planted", "pwned"),
                                 lambda: volume.remove("/race/d/planted"),
                                 lambda: volume.write_file("/race/d/secret", "SANDBOX-DECOY")):
                        code, value = _status(call)
                        if value is not None:
                            no_secret(value)
                        calls += 1
            assert swapper.poll() is None, "the volume swapper died"
            print("volume race: %d calls" % calls)
            assert calls >= 500, calls
        finally:
            swapper.kill()
    finally:
        sb.terminate()
    sentinel.check()
