"""The files API against a real moatd: round trips, streaming with bounded
memory, metadata operations, ownership, hostile paths (including a
symlink-swap race), the disk limit, tar streams and `moat cp`."""

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

import moat
import pytest

from moatd_harness import build_dir, raw_request, http_request, vmrss_kib

MIB = 1024 * 1024


def _run(sb, cmd):
    result = sb.run(cmd)
    assert result.returncode == 0, (cmd, result.stdout, result.stderr)
    out = result.stdout
    return out.encode() if isinstance(out, str) else out


def _raw(moatd, method, path, body=None):
    return raw_request(moatd.socket, http_request(method, path, body))


# --- round trips -------------------------------------------------------------

def test_text_and_binary_round_trip(sandbox):
    files = sandbox.files
    files.write("/tmp/hello.txt", "héllo\n")
    assert files.read_text("/tmp/hello.txt") == "héllo\n"
    blob = bytes(range(256)) * 4096 + b"\0\r\n\xff"
    files.write("/tmp/blob.bin", blob, mode=0o600)
    assert files.read("/tmp/blob.bin") == blob
    assert files.read("/tmp/blob.bin", offset=256, length=10) == bytes(range(10))
    info = files.stat("/tmp/blob.bin")
    assert info.type == "file" and info.size == len(blob) and info.mode == "0600"
    # The sandbox sees what we wrote, byte for byte.
    digest = _run(sandbox, "sha256sum /tmp/blob.bin").split()[0]
    import hashlib
    assert digest.decode() == hashlib.sha256(blob).hexdigest()
    # And we read what the sandbox wrote.
    _run(sandbox, "printf 'from inside' > /tmp/inside.txt")
    assert files.read("/tmp/inside.txt") == b"from inside"
    # Empty file.
    files.write("/tmp/empty", b"")
    assert files.read("/tmp/empty") == b"" and files.stat("/tmp/empty").size == 0


def test_file_object_upload_in_chunks_is_invisible_until_final(moatd, sandbox):
    data = os.urandom(9 * MIB + 123)
    assert sandbox.files.write("/tmp/chunked", io.BytesIO(data), chunk_size=2 * MIB) == len(data)
    assert sandbox.files.read("/tmp/chunked") == data
    # By hand: a chunk that is not final leaves the target untouched.
    base = "/v1/sandboxes/%s/files/content?path=/tmp/partial&upload=u1" % sandbox.id
    status, _, _ = _raw(moatd, "PUT", base + "&offset=0&final=0", b"abc")
    assert status == 200
    assert not sandbox.files.exists("/tmp/partial")
    status, _, body = _raw(moatd, "PUT", base + "&offset=5&final=1", b"zz")
    assert status == 409 and b"offset_mismatch" in body
    status, _, _ = _raw(moatd, "PUT", base + "&offset=3&final=1", b"def")
    assert status == 201
    assert sandbox.files.read("/tmp/partial") == b"abcdef"
    # No temp left beside it.
    assert [e.name for e in sandbox.files.list("/tmp") if e.name.startswith(".moat-upload")] == []


def test_256mib_upload_and_download_stream_with_bounded_memory(moatd, sandbox):
    size = 256 * MIB
    piece = os.urandom(MIB)
    block = piece * 4  # what each 4 MiB chunk carries: the client costs nothing to measure

    class Source(io.RawIOBase):
        def __init__(self):
            self.left = size

        def readable(self):
            return True

        def read(self, n=-1):
            n = min(n if n >= 0 else self.left, self.left, len(block))
            self.left -= n
            return block if n == len(block) else block[:n]

    rss_before = vmrss_kib(moatd.pid)
    start = time.monotonic()
    sandbox.files.write("/tmp/big", Source(), chunk_size=4 * MIB)
    upload_s = time.monotonic() - start
    rss_after_upload = vmrss_kib(moatd.pid)
    assert sandbox.files.stat("/tmp/big").size == size

    start = time.monotonic()
    received = 0
    peak = rss_after_upload
    with sandbox.files.open("/tmp/big") as stream:
        while True:
            chunk = stream.read(4 * MIB)
            if not chunk:
                break
            if received == 0:
                assert chunk[:MIB] == piece
            received += len(chunk)
            if received % (64 * MIB) < 4 * MIB:
                peak = max(peak, vmrss_kib(moatd.pid))
    download_s = time.monotonic() - start
    peak = max(peak, vmrss_kib(moatd.pid))
    assert received == size
    print("\nfiles: upload 256 MiB %.0f MB/s, download %.0f MB/s; moatd RSS %d -> %d KiB (peak %d)"
          % (size / upload_s / 1e6, size / download_s / 1e6, rss_before, rss_after_upload, peak))
    assert peak - rss_before < 64 * 1024, (rss_before, rss_after_upload, peak)
    sandbox.files.remove("/tmp/big")


# --- metadata ------------------------------------------------------------------

def test_list_stat_mkdir_remove_move_chmod(sandbox):
    files = sandbox.files
    files.mkdir("/tmp/a/b/c", parents=True)
    with pytest.raises(moat.NotFound):
        files.mkdir("/tmp/x/y", parents=False)
    with pytest.raises(moat.Conflict) as caught:
        files.mkdir("/tmp/a", parents=False)
    assert caught.value.code == "already_exists"
    files.write("/tmp/a/b/c/f.txt", "x")
    _run(sandbox, "ln -s /etc/hostname /tmp/a/link")
    names = {e.path: e for e in files.list("/tmp/a", depth=4)}
    assert set(names) == {"/tmp/a/b", "/tmp/a/b/c", "/tmp/a/b/c/f.txt", "/tmp/a/link"}
    assert names["/tmp/a/link"].type == "symlink" and names["/tmp/a/link"].symlink_target == "/etc/hostname"
    assert [e.name for e in files.list("/tmp/a")] and {e.name for e in files.list("/tmp/a")} == {"b", "link"}
    assert files.stat("/tmp/a").is_dir
    assert files.stat("/").type == "dir"
    with pytest.raises(moat.Conflict) as caught:
        files.list("/tmp/a/b/c/f.txt")
    assert caught.value.code == "not_a_directory"

    files.move("/tmp/a/b/c/f.txt", "/tmp/a/g.txt")
    assert files.read("/tmp/a/g.txt") == b"x" and not files.exists("/tmp/a/b/c/f.txt")
    files.write("/tmp/a/h.txt", "h")
    with pytest.raises(moat.Conflict):
        files.move("/tmp/a/h.txt", "/tmp/a/g.txt")
    files.move("/tmp/a/h.txt", "/tmp/a/g.txt", overwrite=True)
    assert files.read("/tmp/a/g.txt") == b"h"

    files.chmod("/tmp/a/g.txt", 0o640)
    assert files.stat("/tmp/a/g.txt").mode == "0640"
    assert _run(sandbox, "stat -c %a /tmp/a/g.txt").strip() == b"640"
    with pytest.raises(moat.Conflict):
        files.chmod("/tmp/a/link", 0o600)  # a symlink is never followed
    with pytest.raises(moat.InvalidArgument):
        files.chmod("/tmp/a/g.txt", "4755")  # no setuid from outside

    with pytest.raises(moat.Conflict) as caught:
        files.remove("/tmp/a")
    assert caught.value.code == "not_empty"
    files.remove("/tmp/a/link")
    assert _run(sandbox, "cat /etc/hostname")  # the target is untouched
    files.remove("/tmp/a", recursive=True)
    assert not files.exists("/tmp/a")
    with pytest.raises(moat.NotFound):
        files.remove("/tmp/a")


def test_recursive_remove_never_follows_symlinks(sandbox):
    _run(sandbox, "mkdir -p /tmp/keep /tmp/gone && echo k > /tmp/keep/file && ln -s /tmp/keep /tmp/gone/link")
    sandbox.files.remove("/tmp/gone", recursive=True)
    assert sandbox.files.read("/tmp/keep/file") == b"k\n"


def test_list_is_bounded_by_depth_and_validates(sandbox):
    with pytest.raises(moat.InvalidArgument):
        sandbox.files.list("/tmp", depth=0)
    with pytest.raises(moat.InvalidArgument):
        sandbox.files.list("/tmp", depth=17)
    _run(sandbox, "mkdir -p /tmp/many && cd /tmp/many && seq 1 10000 | xargs touch")
    start = time.monotonic()
    entries = sandbox.files.list("/tmp/many")
    print("\nfiles: list of 10,000 entries in %.3f s" % (time.monotonic() - start))
    assert len(entries) == 10000


# --- ownership -------------------------------------------------------------------

def test_files_are_owned_by_the_sandbox_user(moatd, sandbox):
    files = sandbox.files
    files.write("/tmp/root-owned", "r")
    assert _run(sandbox, "stat -c %u:%g /tmp/root-owned").strip() == b"0:0"
    files.write("/tmp/nobody/owned", "n", user="nobody", make_dirs=True)
    uid, gid = _run(sandbox, "id -u nobody; id -g nobody").split()
    assert _run(sandbox, "stat -c %u:%g /tmp/nobody/owned").strip() == uid + b":" + gid
    assert files.stat("/tmp/nobody/owned").uid == int(uid)
    # The user can then change it from inside.
    assert sandbox.run("echo more >> /tmp/nobody/owned", user="nobody").returncode == 0
    with pytest.raises(moat.InvalidArgument):
        files.write("/tmp/x", "x", user="no-such-user")
    files.mkdir("/tmp/nobody-dir", user="nobody")
    assert _run(sandbox, "stat -c %u /tmp/nobody-dir").strip() == uid
    with moat.Sandbox.create(user="nobody", socket=moatd.socket) as sb:
        sb.files.write("/tmp/default-user", "d")
        assert _run(sb, "stat -c %u /tmp/default-user").strip() == uid


# --- hostile paths -----------------------------------------------------------------

@pytest.mark.parametrize("path", ["", "relative/path", "../../etc/passwd", "/" + "a" * 4096])
def test_bad_paths_are_refused(moatd, sandbox, path):
    with pytest.raises(moat.InvalidArgument):
        sandbox.files.read(path)
    with pytest.raises(moat.InvalidArgument):
        sandbox.files.write(path, "x")
    with pytest.raises(moat.InvalidArgument):
        sandbox.files.stat(path)


def test_nul_and_missing_path_are_refused(moatd, sandbox):
    base = "/v1/sandboxes/%s/files" % sandbox.id
    for method, route in (("GET", "/content?path=/etc/hostname%00.txt"), ("GET", "/stat"),
                          ("PUT", "/content?path=/tmp/a%00b"), ("GET", "/list?path=")):
        status, _, body = _raw(moatd, method, base + route, b"x" if method == "PUT" else None)
        assert status == 400, (route, body)
    status, _, body = _raw(moatd, "POST", base + "/mkdir", b'{"path":"/tmp/a\\u0000b"}')
    assert status == 400, body
    status, _, body = _raw(moatd, "POST", base + "/remove", b'{"path":"/tmp/x","bogus":1}')
    assert status == 400, body
    assert not sandbox.files.exists("/tmp/a")


def test_dotdot_stays_in_the_sandbox(sandbox):
    with open("/etc/passwd", "rb") as f:
        host_passwd = f.read()
    _run(sandbox, "echo 'moatmarker:x:4242:4242::/:/bin/false' >> /etc/passwd")
    content = sandbox.files.read("/tmp/../../../../etc/passwd")
    assert b"moatmarker" in content
    sandbox.files.write("/tmp/../../../etc/moat-escape-test", "in")
    assert _run(sandbox, "cat /etc/moat-escape-test") == b"in"
    assert not os.path.exists("/etc/moat-escape-test")
    with open("/etc/passwd", "rb") as f:
        assert f.read() == host_passwd


def test_symlinks_resolve_inside_the_sandbox(sandbox):
    host_dir = tempfile.mkdtemp(prefix="moat-files-host-")
    try:
        with open(os.path.join(host_dir, "secret"), "w") as f:
            f.write("HOST SECRET")
        _run(sandbox, "echo SANDBOX-SHADOW > /etc/shadow; ln -s /etc/shadow /tmp/shadow-link; "
                      "ln -s %s/secret /tmp/host-link; ln -s ../../../../../%s /tmp/host-dir-link"
                      % (host_dir, host_dir))
        assert sandbox.files.read("/tmp/shadow-link") == b"SANDBOX-SHADOW\n"
        with pytest.raises(moat.NotFound):
            sandbox.files.read("/tmp/host-link")
        with pytest.raises(moat.NotFound):
            sandbox.files.read("/tmp/host-dir-link/secret")
        with pytest.raises(moat.NotFound):
            sandbox.files.write("/tmp/host-dir-link/planted", "x")
        # A write replaces the path's final component (the upload is
        # renamed onto the name): a symlink there is replaced, its target
        # is never written through.
        sandbox.files.write("/tmp/shadow-link", "REPLACED")
        assert _run(sandbox, "test ! -L /tmp/shadow-link && cat /tmp/shadow-link /etc/shadow") == \
            b"REPLACEDSANDBOX-SHADOW\n"
        assert os.listdir(host_dir) == ["secret"]
        # /proc/self/root style magic links are refused, not followed.
        with pytest.raises(moat.Error):
            sandbox.files.read("/proc/1/root/etc/hostname")
    finally:
        shutil.rmtree(host_dir)


def test_symlink_swap_race_never_reaches_the_host(sandbox):
    host_dir = tempfile.mkdtemp(prefix="moat-files-race-")
    try:
        with open(os.path.join(host_dir, "secret"), "w") as f:
            f.write("HOST SECRET")
        # Inside: /tmp/r flips between a real directory, a symlink to "/"
        # and a symlink to the host directory's path, as fast as it can.
        swapper = sandbox.exec("python3", "-c", r"""
import os, sys
os.makedirs('/tmp/real', exist_ok=True)
open('/tmp/real/secret', 'w').write('SANDBOX DIR')
open('/secret', 'w').write('SANDBOX ROOT')
os.symlink('/', '/tmp/to-root')
os.symlink(sys.argv[1], '/tmp/to-host')
os.symlink('/tmp/real', '/tmp/r')
n = 0
while True:
    for src in ('/tmp/to-root', '/tmp/to-host'):
        os.symlink(os.readlink(src), '/tmp/r.new')
        os.rename('/tmp/r.new', '/tmp/r')
        n += 1
    os.rename('/tmp/real', '/tmp/real.moving'); os.rename('/tmp/real.moving', '/tmp/real')
    try:
        os.unlink('/tmp/r')
    except FileNotFoundError:
        pass
    os.rename('/tmp/real', '/tmp/r')
    os.rename('/tmp/r', '/tmp/real')
    os.symlink('/tmp/real', '/tmp/r.new'); os.rename('/tmp/r.new', '/tmp/r')
""", host_dir, stdin=False)
        try:
            deadline = time.monotonic() + 10
            while not sandbox.files.exists("/tmp/r") and time.monotonic() < deadline:
                time.sleep(0.05)
            outcomes = {}
            for i in range(2000):
                try:
                    sandbox.files.write("/tmp/r/planted-%d" % (i % 50), "x")
                    outcomes["write-ok"] = outcomes.get("write-ok", 0) + 1
                except moat.Error as e:
                    outcomes[e.code] = outcomes.get(e.code, 0) + 1
                try:
                    content = sandbox.files.read("/tmp/r/secret")
                    assert content in (b"SANDBOX DIR", b"SANDBOX ROOT"), content
                    outcomes[content] = outcomes.get(content, 0) + 1
                except moat.Error as e:
                    outcomes["read-" + e.code] = outcomes.get("read-" + e.code, 0) + 1
            print("\nfiles: race outcomes %s" % outcomes)
            assert swapper.poll() is None, "the swapper died: the race did not run"
        finally:
            swapper.kill()
        assert os.listdir(host_dir) == ["secret"]
        assert not any(name.startswith("planted-") for name in os.listdir("/"))
        with open(os.path.join(host_dir, "secret")) as f:
            assert f.read() == "HOST SECRET"
    finally:
        shutil.rmtree(host_dir)


# --- errors -----------------------------------------------------------------------------

def test_directory_where_a_file_is_expected(sandbox):
    sandbox.files.mkdir("/tmp/dir")
    with pytest.raises(moat.Conflict) as caught:
        sandbox.files.write("/tmp/dir", "x")
    assert caught.value.code == "is_a_directory" and caught.value.status == 409
    with pytest.raises(moat.Conflict) as caught:
        sandbox.files.read("/tmp/dir")
    assert caught.value.code == "is_a_directory"
    with pytest.raises(moat.NotFound):
        sandbox.files.read("/tmp/nope")
    with pytest.raises(moat.NotFound):
        sandbox.files.write("/tmp/nope/x", "x")
    sandbox.files.write("/tmp/nope/x", "x", make_dirs=True)


def test_disk_full_is_a_limit_error_and_leaves_no_partial_file(moatd):
    with moat.Sandbox.create(disk=16, socket=moatd.socket) as sb:
        with pytest.raises(moat.LimitExceeded) as caught:
            sb.files.write("/root/big", os.urandom(32 * MIB))
        assert caught.value.code == "disk_full"
        assert not sb.files.exists("/root/big")
        assert [e.name for e in sb.files.list("/root") if e.name.startswith(".moat-upload")] == []
        # The disk is usable again afterwards.
        sb.files.write("/root/small", "ok")
        assert sb.files.read("/root/small") == b"ok"


def test_stopped_sandbox_is_a_conflict(moatd):
    with moat.Sandbox.create("true", socket=moatd.socket) as sb:
        sb.wait(timeout=30)
        with pytest.raises(moat.SandboxNotRunning):
            sb.files.read("/etc/hostname")
        with pytest.raises(moat.SandboxNotRunning):
            sb.files.write("/tmp/x", "x")
    with pytest.raises(moat.NotFound):
        moat.Sandbox(moatd.client(), {"id": "sb-nope"}).files.stat("/")


# --- tar streams and moat cp ---------------------------------------------------------------

def test_directory_upload_and_download(sandbox, tmp_path):
    source = tmp_path / "src"
    (source / "sub" / "deeper").mkdir(parents=True)
    for i in range(1000):
        (source / "sub" / ("f%04d.txt" % i)).write_text("file %d\n" % i)
    (source / "sub" / "deeper" / "bin").write_bytes(os.urandom(3 * MIB))
    os.symlink("sub/f0001.txt", source / "link")
    start = time.monotonic()
    sandbox.files.upload_dir(str(source), "/tmp/up")
    upload_s = time.monotonic() - start
    assert sandbox.files.read("/tmp/up/sub/f0999.txt") == b"file 999\n"
    assert sandbox.files.stat("/tmp/up/link").symlink_target == "sub/f0001.txt"
    target = tmp_path / "back"
    start = time.monotonic()
    sandbox.files.download_dir("/tmp/up", str(target))
    download_s = time.monotonic() - start
    print("\nfiles: 1,000 small files up %.3f s, down %.3f s" % (upload_s, download_s))
    assert (target / "sub" / "f0500.txt").read_text() == "file 500\n"
    assert (target / "sub" / "deeper" / "bin").read_bytes() == (source / "sub" / "deeper" / "bin").read_bytes()
    assert len(os.listdir(target / "sub")) == 1001


def test_hostile_archive_entries_are_refused(moatd, sandbox):
    for name in ("../escape", "/abs"):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        status, _, body = _raw(moatd, "PUT", "/v1/sandboxes/%s/files/archive?path=/tmp/t" % sandbox.id,
                               buffer.getvalue())
        assert status == 400 and b"bad_archive" in body, body
    # An entry through a symlink planted by an earlier entry stays beneath.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("out")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc"
        tar.addfile(link)
        info = tarfile.TarInfo("out/moat-planted")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    status, _, body = _raw(moatd, "PUT", "/v1/sandboxes/%s/files/archive?path=/tmp/t2" % sandbox.id,
                           buffer.getvalue())
    assert status == 409, body
    assert not sandbox.files.exists("/etc/moat-planted")
    status, _, body = _raw(moatd, "PUT", "/v1/sandboxes/%s/files/archive?path=/tmp/t3" % sandbox.id, b"not a tar")
    assert status == 400, body


def _moat_cli():
    path = os.path.join(build_dir(), "src", "cli", "moat")
    if not os.access(path, os.X_OK):
        pytest.skip("no moat CLI at %s" % path)
    return path


def test_moat_cp_both_ways(moatd, sandbox, tmp_path):
    cli = _moat_cli()
    env = dict(os.environ, MOAT_SOCKET=moatd.socket)
    local = tmp_path / "one.bin"
    data = os.urandom(11 * MIB)
    local.write_bytes(data)
    subprocess.run([cli, "cp", str(local), "%s:/tmp/one.bin" % sandbox.id], env=env, check=True, timeout=60)
    assert sandbox.files.read("/tmp/one.bin") == data
    back = tmp_path / "back.bin"
    subprocess.run([cli, "cp", "%s:/tmp/one.bin" % sandbox.id, str(back)], env=env, check=True, timeout=60)
    assert back.read_bytes() == data

    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "x.txt").write_text("x")
    subprocess.run([cli, "cp", str(tree), "%s:/tmp/tree" % sandbox.id], env=env, check=True, timeout=60)
    assert sandbox.files.read("/tmp/tree/a/x.txt") == b"x"
    out = tmp_path / "out"
    subprocess.run([cli, "cp", "%s:/tmp/tree" % sandbox.id, str(out)], env=env, check=True, timeout=60)
    assert (out / "a" / "x.txt").read_text() == "x"

    failed = subprocess.run([cli, "cp", "%s:/tmp/nope" % sandbox.id, str(tmp_path / "n")], env=env,
                            capture_output=True, timeout=60)
    assert failed.returncode != 0 and b"not_found" in failed.stderr


def test_client_leaving_mid_stream_frees_the_stream(moatd, sandbox):
    sandbox.files.write("/tmp/forty", os.urandom(40 * MIB))
    fds_before = moatd.settled_fd_count()
    for _ in range(20):
        stream = sandbox.files.open("/tmp/forty")
        assert len(stream.read(MIB)) == MIB
        stream.close()
        archive = sandbox.files._get_stream("/archive", {"path": "/tmp"})
        archive[1].read(1000)
        archive[1].close()
        archive[0].close()
    moatd.healthy(timeout=5)
    assert sandbox.files.read("/tmp/forty", length=10)
    assert moatd.settled_fd_count(target=fds_before) <= fds_before


def test_watch_reports_changes_recursively(sandbox):
    sandbox.files.mkdir("/tmp/w/sub", parents=True)
    with sandbox.files.watch("/tmp/w", recursive=True) as watch:
        assert watch.directories == 2
        _run(sandbox, "echo a > /tmp/w/sub/f; mkdir /tmp/w/new; sleep 0.2; echo b > /tmp/w/new/g; "
                      "mv /tmp/w/sub/f /tmp/w/h; rm /tmp/w/h; chmod 700 /tmp/w/new")
        seen = []
        for event in watch:
            seen.append((event["type"], event["path"]))
            if event["type"] == "chmod" and event["path"] == "/tmp/w/new":
                break
    for expected in [("create", "/tmp/w/sub/f"), ("close_write", "/tmp/w/sub/f"), ("create", "/tmp/w/new"),
                     ("create", "/tmp/w/new/g"), ("move_from", "/tmp/w/sub/f"), ("move_to", "/tmp/w/h"),
                     ("delete", "/tmp/w/h")]:
        assert expected in seen, (expected, seen)
    with pytest.raises(moat.Conflict):
        sandbox.files.watch("/etc/hostname")


def test_watch_ends_when_the_directory_or_sandbox_goes(moatd):
    with moat.Sandbox.create(socket=moatd.socket) as sb:
        sb.files.mkdir("/tmp/gone")
        watch = sb.files.watch("/tmp/gone")
        sb.files.remove("/tmp/gone")
        assert [e["type"] for e in watch] == []  # the deletion of the directory itself ends it
        watch = sb.files.watch("/tmp")
        sb.terminate()
        start = time.monotonic()
        list(watch)
        assert time.monotonic() - start < 10
