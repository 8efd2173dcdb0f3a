"""Volumes against a real moatd: the registry (create/ls/inspect/rm), mounts
into sandboxes (shared, read-only, size-limited, idmapped so ownership agrees
across sandboxes), persistence across sandbox deletes and moatd restarts, the
files API from outside, and the bad inputs. Every test removes its volumes;
the teardown also checks that no loop device or mount of ours is left."""

import os
import signal
import subprocess
import time

import pytest

import moatd_harness
from moatd_harness import moat
from moat.volume import Volume


def volumes_dir(moatd):
    return os.path.join(moatd.data_dir, "volumes")


def our_loop_devices(moatd):
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if moatd.tmp in line]


def our_mounts(moatd):
    return [m for m in moatd_harness.mount_points("self") if m.startswith(volumes_dir(moatd))]


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(autouse=True)
def no_volume_leaks(moatd):
    """After each test: delete what it left, then nothing of it may remain."""
    yield
    for sb in moat.Sandbox.list(socket=moatd.socket):
        sb.terminate()
    for vol in Volume.list(socket=moatd.socket):
        Volume.delete(vol.name, socket=moatd.socket)
    assert wait_for(lambda: not our_loop_devices(moatd)), our_loop_devices(moatd)
    assert our_mounts(moatd) == []
    assert os.listdir(volumes_dir(moatd)) == []


def sh(sb, cmd, user=None, ok=True):
    result = sb.run(cmd, user=user, timeout=60)
    if ok:
        assert result.exit_code == 0, (cmd, result.stdout, result.stderr)
    return result


# --- the registry ---------------------------------------------------------------

def test_create_list_inspect_delete(moatd):
    vol = Volume.create("alpha", size_mib=16, socket=moatd.socket)
    assert vol.name == "alpha" and vol.size_mib == 16
    assert [v.name for v in Volume.list(socket=moatd.socket)] == ["alpha"]
    assert Volume.from_name("alpha", socket=moatd.socket).size_mib == 16
    assert len(our_loop_devices(moatd)) == 1 and len(our_mounts(moatd)) == 1
    with pytest.raises(moat.Conflict):
        Volume.create("alpha", socket=moatd.socket)
    Volume.delete("alpha", socket=moatd.socket)
    with pytest.raises(moat.NotFound) as info:
        Volume.from_name("alpha", socket=moatd.socket)
    assert info.value.code == "volume_not_found"
    assert wait_for(lambda: not our_loop_devices(moatd))
    assert our_mounts(moatd) == []
    with pytest.raises(moat.NotFound):
        Volume.delete("alpha", socket=moatd.socket)


def test_from_name_create_if_missing_and_default_size(moatd):
    vol = Volume.from_name("beta", create_if_missing=True, socket=moatd.socket)
    assert vol.size_mib == 1024
    # Sparse: the 1 GiB cap costs the host almost nothing.
    image = os.path.join(volumes_dir(moatd), "beta", "disk.img")
    assert os.stat(image).st_size == 1024 << 20
    assert os.stat(image).st_blocks * 512 < 64 << 20
    assert Volume.from_name("beta", create_if_missing=True, socket=moatd.socket).name == "beta"


@pytest.mark.parametrize("name", ["a/b", "..", "x\n", "a" * 70, "", "Upper", "-x", "a..b", ".hidden"])
def test_bad_names_are_refused(moatd, name):
    client = moatd.client()
    with pytest.raises(moat.InvalidArgument):
        client.request("POST", "/v1/volumes", json_body={"name": name, "size_mib": 8})
    assert os.listdir(volumes_dir(moatd)) == []


@pytest.mark.parametrize("body", [{"name": "s", "size_mib": 0}, {"name": "s", "size_mib": 1048577},
                                  {"name": "s", "size_mib": "8"}, {"size_mib": 8}, {"name": "s", "x": 1}])
def test_bad_create_bodies_are_refused(moatd, body):
    with pytest.raises(moat.InvalidArgument):
        moatd.client().request("POST", "/v1/volumes", json_body=body)


@pytest.mark.parametrize("target", ["/", "relative", "/proc/x", "/sys", "/dev/shm", "/a/../b", "/a//b",
                                    "/a/", "/./a", "/a\nb", "/" + "a" * 300])
def test_bad_mount_targets_are_refused(moatd, target):
    Volume.create("tgt", size_mib=8, socket=moatd.socket)
    with pytest.raises(moat.InvalidArgument):
        moat.Sandbox.create(socket=moatd.socket, volumes={target: "tgt"})


def test_duplicate_targets_and_too_many_are_refused(moatd):
    Volume.create("dup", size_mib=8, socket=moatd.socket)
    body = b'{"volumes": {"/data": "dup", "/data": "dup"}}'
    with pytest.raises(moat.InvalidArgument):
        moatd.client().request("POST", "/v1/sandboxes", raw_body=body)
    with pytest.raises(moat.InvalidArgument):
        moat.Sandbox.create(socket=moatd.socket, volumes={"/v%d" % i: "dup" for i in range(17)})


def test_unknown_volume_is_404(moatd):
    with pytest.raises(moat.NotFound) as info:
        moat.Sandbox.create(socket=moatd.socket, volumes={"/data": "nosuch"})
    assert info.value.code == "volume_not_found"


# --- mounted into sandboxes ---------------------------------------------------------

def test_mount_read_write_and_in_use(moatd):
    vol = Volume.create("rw", size_mib=32, socket=moatd.socket)
    vol.write_file("/hello.txt", b"from outside")
    sb = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": vol, "/mnt/deep/ro": vol.read_only()})
    assert sh(sb, "cat /data/hello.txt").stdout == "from outside"
    sh(sb, "echo inside > /data/inside.txt && sync /data/inside.txt")
    assert vol.read_file("/inside.txt") == b"inside\n"
    # read-only: EROFS inside, whatever the user.
    r = sh(sb, "echo x > /mnt/deep/ro/nope", ok=False)
    assert r.exit_code != 0 and "Read-only file system" in r.stderr
    assert sh(sb, "cat /mnt/deep/ro/inside.txt").stdout == "inside\n"
    # In use: refused, with its own code; the data is untouched.
    with pytest.raises(moat.Conflict) as info:
        Volume.delete("rw", socket=moatd.socket)
    assert info.value.code == "volume_in_use"
    assert vol.read_file("/hello.txt") == b"from outside"
    sb.terminate()
    Volume.delete("rw", socket=moatd.socket)


def test_shared_between_two_sandboxes_with_consistent_ownership(moatd):
    vol = Volume.create("shared", size_mib=32, socket=moatd.socket)
    a = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": vol})
    b = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": vol})
    sh(a, "mkdir /data/work && chown 1000:1000 /data/work")
    sh(a, "echo one > /data/work/file && sync", user="1000")
    # b sees a's write at once (one filesystem), owned by uid 1000 ...
    assert sh(b, "stat -c '%u:%g' /data/work/file").stdout.strip() == "1000:1000"
    # ... and its uid 1000 may modify it, though the two sandboxes' uid
    # 1000 are different host ids.
    sh(b, "echo two >> /data/work/file && sync", user="1000")
    assert sh(a, "cat /data/work/file").stdout == "one\ntwo\n"
    host_a = sh(a, "cat /proc/self/uid_map").stdout.split()
    host_b = sh(b, "cat /proc/self/uid_map").stdout.split()
    assert host_a[1] != host_b[1], "the two sandboxes share a host id range"
    # On disk the file is stored with the sandbox-side id, not a host range.
    entries = {e["name"]: e for e in vol.listdir("/work")}
    assert entries["file"]["uid"] == 1000
    # uid 1001 may not write there (mode 0644 of uid 1000): ownership is enforced.
    r = sh(b, "echo three >> /data/work/file", user="1001", ok=False)
    assert r.exit_code != 0


def test_size_limit_is_enospc_inside_and_bounded_on_the_host(moatd):
    Volume.create("small", size_mib=32, socket=moatd.socket)
    sb = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": "small"})
    r = sh(sb, "dd if=/dev/zero of=/data/big bs=1M count=64 conv=fsync", ok=False)
    assert r.exit_code != 0 and "No space left on device" in r.stderr
    image = os.path.join(volumes_dir(moatd), "small", "disk.img")
    st = os.stat(image)
    assert st.st_size <= 32 << 20 and st.st_blocks * 512 <= 32 << 20
    sh(sb, "rm /data/big")
    sh(sb, "echo fits > /data/ok && sync")


def test_data_survives_sandbox_delete_and_moatd_restarts(moatd):
    Volume.create("durable", size_mib=16, socket=moatd.socket)
    sb = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": "durable"})
    sh(sb, "echo kept > /data/k && sync /data/k")
    sb.terminate()
    assert Volume.from_name("durable", socket=moatd.socket).read_file("/k") == b"kept\n"
    # A crash: SIGKILL leaves the mount behind; the new moatd reuses it.
    moatd.proc.kill()
    moatd.proc.wait()
    moatd.restart()
    assert len(our_mounts(moatd)) == 1 and len(our_loop_devices(moatd)) == 1
    assert Volume.from_name("durable", socket=moatd.socket).read_file("/k") == b"kept\n"
    # A clean stop unmounts and detaches everything; a start attaches it again.
    moatd.proc.send_signal(signal.SIGTERM)
    moatd.proc.wait(timeout=20)
    assert our_mounts(moatd) == []
    assert wait_for(lambda: not our_loop_devices(moatd))
    moatd.restart()
    sb = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": "durable"})
    assert sh(sb, "cat /data/k").stdout == "kept\n"


def test_moatd_crash_with_a_mounted_volume(moatd):
    Volume.create("crash", size_mib=16, socket=moatd.socket)
    sb = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": "crash"})
    sh(sb, "echo before > /data/f && sync /data/f")
    moatd.proc.kill()
    moatd.proc.wait()
    moatd.restart()
    # The old sandbox is reaped; its volume is one mount on one loop device,
    # the data intact, and nothing holds it any more.
    assert len(our_mounts(moatd)) == 1
    assert wait_for(lambda: len(our_loop_devices(moatd)) == 1)
    vol = Volume.from_name("crash", socket=moatd.socket)
    assert vol.read_file("/f") == b"before\n"
    sb = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": "crash"})
    assert sh(sb, "cat /data/f").stdout == "before\n"
    sb.terminate()
    Volume.delete("crash", socket=moatd.socket)


# --- outside access ---------------------------------------------------------------

def test_files_api_read_write_list_remove(moatd):
    vol = Volume.create("files", size_mib=16, socket=moatd.socket)
    payload = os.urandom(3 << 20)
    vol.write_file("/blob", payload)
    assert vol.read_file("/blob") == payload
    vol.write_file("/blob", b"short")  # whole-file replace
    assert vol.read_file("/blob") == b"short"
    sb = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": vol})
    sh(sb, "mkdir -p /data/d/e && echo x > /data/d/e/f")
    names = sorted(e["name"] for e in vol.listdir("/"))
    assert names == ["blob", "d"]
    assert [e["type"] for e in vol.listdir("/d")] == ["dir"]
    with pytest.raises(moat.Conflict):
        vol.remove("/d")
    vol.remove("/d", recursive=True)
    vol.remove("/blob")
    assert vol.listdir("/") == []
    assert sh(sb, "ls -A /data").stdout == ""
    with pytest.raises(moat.NotFound):
        vol.read_file("/blob")
    with pytest.raises(moat.NotFound):
        vol.remove("/blob")
    with pytest.raises(moat.InvalidArgument):
        vol.read_file("relative")
    with pytest.raises(moat.InvalidArgument):
        vol.remove("/")
    with pytest.raises(moat.InvalidArgument):
        vol.write_file("/", b"x")
    with pytest.raises(moat.NotFound):
        vol.write_file("/no/such/dir/f", b"x")
    # 8 MiB bound on one upload.
    with pytest.raises((moat.PayloadTooLarge, moat.LimitExceeded, moat.Unavailable)):
        vol.write_file("/huge", b"\0" * (9 << 20))
    assert "huge" not in [e["name"] for e in vol.listdir("/")]


def test_symlinks_planted_in_a_volume_stay_inside_it(moatd):
    vol = Volume.create("evil", size_mib=16, socket=moatd.socket)
    sb = moat.Sandbox.create(socket=moatd.socket, volumes={"/data": vol})
    sh(sb, "ln -s /etc/passwd /data/abs && ln -s ../../../../../../etc/passwd /data/rel && "
           "mkdir /data/etc && echo volume-view > /data/etc/passwd && ln -s / /data/root && "
           "ln -s /proc/self/root/etc/passwd /data/magic")
    host_passwd = open("/etc/passwd", "rb").read()
    # Absolute and climbing links resolve inside the volume: its own /etc/passwd.
    assert vol.read_file("/abs") == b"volume-view\n"
    assert vol.read_file("/rel") == b"volume-view\n"
    assert vol.read_file("/root/etc/passwd") == b"volume-view\n"
    assert vol.read_file("/../../etc/passwd") == b"volume-view\n"
    with pytest.raises(moat.Error):
        data = vol.read_file("/magic")
        assert data != host_passwd
    sh(sb, "rm -r /data/etc")
    for path in ("/abs", "/rel", "/root/etc/passwd", "/../../../etc/passwd"):
        with pytest.raises(moat.NotFound):
            vol.read_file(path)
    # Writes through a link cannot land on the host either.
    with pytest.raises(moat.NotFound):
        vol.write_file("/root/etc/hostile", b"x")
    vol.write_file("/root/hostile", b"x")
    assert not os.path.exists("/hostile") and not os.path.exists("/etc/hostile")
    assert vol.read_file("/hostile") == b"x"
    assert open("/etc/passwd", "rb").read() == host_passwd
    # Removing a link removes the link, not its target.
    vol.remove("/root")
    assert os.path.isdir("/etc")


def test_mount_target_through_an_image_symlink_fails_cleanly(moatd):
    # /bin is a symlink (merged /usr) in the host image: a mount there could
    # otherwise land on another tree. The create fails; nothing is left.
    assert os.path.islink("/bin")
    Volume.create("link", size_mib=8, socket=moatd.socket)
    with pytest.raises(moat.Error) as info:
        moat.Sandbox.create(socket=moatd.socket, volumes={"/bin/vol": "link"})
    assert "volume" in info.value.message
    assert not os.path.exists("/usr/bin/vol")
    # The volume is not held by the failed sandbox once it is torn down.
    def deleted():
        try:
            Volume.delete("link", socket=moatd.socket)
            return True
        except moat.Conflict:
            return False
    assert wait_for(deleted)
