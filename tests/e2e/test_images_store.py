"""The image store end to end: import, snapshots (layers stacked, deletions,
owners, isolation between sandboxes), in-use refusal, prune, inspect, bad
references, and the Debian pull with its progress stream; through the SDK,
the CLI and raw HTTP against a real moatd."""

import hashlib
import json
import os
import stat
import subprocess
import time

import pytest

import moatd_harness
from moatd_harness import moat
from test_images import copy_with_libraries

DEBIAN_REF = "debian:bookworm-slim"
MIB = 1024 * 1024


def moat_cli(moatd, *args, timeout=60):
    binary = os.path.join(moatd_harness.build_dir(), "src", "cli", "moat")
    return subprocess.run([binary, "--socket", moatd.socket, *args], capture_output=True, timeout=timeout)


def sh(sb, script):
    """Run a shell script in sb; returns stdout, asserting it succeeded."""
    result = sb.run(["/bin/sh", "-c", script], timeout=120)
    assert result.exit_code == 0, (script, result.stdout, result.stderr)
    return result.stdout


def store_dir(moatd):
    return os.path.join(moatd.data_dir, "images")


def layer_rootfs(moatd, layer_id):
    return os.path.join(store_dir(moatd), "layers", layer_id, "rootfs")


def raw_status(moatd, method, path, body=None):
    status, _headers, data = moatd.raw(moatd_harness.http_request(method, path, body))
    return status, json.loads(data or b"{}")


@pytest.fixture
def tiny_rootfs(tmp_path):
    root = tmp_path / "rootfs"
    for d in ("bin", "etc", "tmp", "proc", "dev", "sys"):
        (root / d).mkdir(parents=True)
    for tool in ("/bin/sh", "/bin/cat", "/bin/ls", "/bin/rm", "/bin/stat"):
        copy_with_libraries(tool, str(root))
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "marker").write_text("from the tiny image\n")
    return str(root)


@pytest.fixture
def sandboxes(moatd):
    """Sandboxes a test makes, terminated at its end whatever happens."""
    made = []

    def create(**kwargs):
        sb = moat.Sandbox.create(socket=moatd.socket, **kwargs)
        made.append(sb)
        return sb

    yield create
    for sb in made:
        sb.terminate()


def delete_quietly(image):
    """Cleanup after a failure: the test's sandboxes may still use it."""
    try:
        image.delete()
    except (moat.NotFound, moat.Conflict):
        pass


def prune_until_gone(moatd, image_id, timeout=15):
    """Prune until image_id is gone (a deleted sandbox may still be tearing down)."""
    deadline = time.monotonic() + timeout
    while True:
        moat.Image.prune(socket=moatd.socket)
        if image_id not in [i.id for i in moat.Image.list(socket=moatd.socket)]:
            return
        if time.monotonic() > deadline:
            raise AssertionError("prune left %s" % image_id)
        time.sleep(0.2)


# --- import ---------------------------------------------------------------------

def test_import_a_directory_and_run_in_it(moatd, tiny_rootfs, sandboxes):
    image = moat.Image.import_directory(tiny_rootfs, "store/tiny:1", socket=moatd.socket)
    try:
        assert image.id.startswith("img-") and image.names == ["store/tiny:1"]
        assert len(image.layers) == 1 and len(image.layers[0]) == 64
        assert image.parent is None and image.size > 0
        sb = sandboxes(image=image)  # an Image object, not only a name
        out = sh(sb, "cat /etc/marker; ls /")
        assert "from the tiny image" in out
        assert "usr" not in out.split()  # the tiny tree, not the host's
        assert sb.info["image"] in ("store/tiny:1", image.id)
        sb.terminate()
    finally:
        delete_quietly(image)


# --- snapshots ------------------------------------------------------------------

SNAPSHOT_CHANGES = r"""
set -e
mkdir -p /data
head -c 10485760 /dev/urandom > /data/big
echo hello > /root/hello
echo owned > /data/owned
chown 1000:1000 /data/owned
chmod 640 /data/owned
ln -s /data/big /data/link
rm /etc/debian_version               # a file of the image: deleted
rm -rf /etc/skel                     # a directory of the image: deleted
rm -rf /etc/profile.d                # a directory replaced by a file
echo now-a-file > /etc/profile.d
rm -rf /etc/ssl                      # a directory emptied and made anew: opaque
mkdir /etc/ssl
echo only > /etc/ssl/only
sha256sum /data/big | cut -d' ' -f1
"""


def check_first_snapshot_contents(sb, big_sha):
    out = sh(sb, r"""
        sha256sum /data/big | cut -d' ' -f1
        cat /root/hello
        stat -c '%u:%g %a' /data/owned
        readlink /data/link
        test -e /etc/debian_version && echo debian_version-present || echo debian_version-gone
        test -e /etc/skel && echo skel-present || echo skel-gone
        test -f /etc/profile.d && cat /etc/profile.d
        ls -A /etc/ssl
        test -e /etc/os-release && echo os-release-present
    """).split("\n")
    assert out[0] == big_sha
    assert out[1] == "hello"
    assert out[2] == "1000:1000 640"
    assert out[3] == "/data/big"
    assert out[4] == "debian_version-gone"
    assert out[5] == "skel-gone"
    assert out[6] == "now-a-file"
    assert out[7] == "only"  # the image's /etc/ssl contents stay hidden
    assert out[8] == "os-release-present"  # untouched files of the image are there


def test_snapshot_round_trip_layers_and_isolation(moatd, sandboxes):
    host = moat.Image.from_name("host", socket=moatd.socket)
    original = sandboxes()
    big_sha = sh(original, SNAPSHOT_CHANGES).strip()

    snap1 = original.snapshot_filesystem(name="store/snap:1")
    try:
        assert snap1.snapshot_ms is not None and snap1.snapshot_ms < 2000, snap1.snapshot_ms
        assert snap1.parent == host.id
        assert snap1.layers[:-1] == host.layers and len(snap1.layers) == len(host.layers) + 1
        assert snap1.config == host.config  # inherited from the parent
        assert snap1.size >= 10 * MIB
        assert original.refresh().state == "running"  # the sandbox keeps running

        # The layer on the host holds overlayfs-format deletions (userxattr flavour).
        top = layer_rootfs(moatd, snap1.layers[-1])
        whiteout = os.lstat(os.path.join(top, "etc", "debian_version"))
        assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
        assert os.getxattr(os.path.join(top, "etc", "ssl"), "user.overlay.opaque", follow_symlinks=False) == b"y"

        # A new sandbox sees exactly the changes.
        b = sandboxes(image=snap1)
        check_first_snapshot_contents(b, big_sha)

        # A snapshot of a snapshot: three layers, the second layer's file deleted by the third.
        sh(b, "rm /root/hello; echo second > /root/second; chown 1000:1000 /root/second")
        snap2 = b.snapshot_filesystem()
        assert snap2.parent == snap1.id and snap2.name is None and snap2.names == []
        assert snap2.layers[:-1] == snap1.layers and len(snap2.layers) == 3
        c = sandboxes(image=snap2.id)
        out = sh(c, "sha256sum /data/big | cut -d' ' -f1; test -e /root/hello || echo hello-gone;"
                    " stat -c '%u %n' /root/second; cat /root/second;"
                    " test -e /etc/debian_version || echo still-gone").split("\n")
        assert out[:5] == [big_sha, "hello-gone", "1000 /root/second", "second", "still-gone"]
        c.terminate()

        # The original's writes never reach a sandbox of the base image.
        d = sandboxes(image="host")
        out = sh(d, "test -e /data/big || echo no-big; test -e /root/hello || echo no-hello;"
                    " test -e /etc/debian_version && echo has-debian_version; ls /etc/skel >/dev/null && echo has-skel")
        assert out.split() == ["no-big", "no-hello", "has-debian_version", "has-skel"]

        # A sandbox cannot write into a layer: B's write to a file of snap1 is
        # B's own copy; a third sandbox of snap1 sees the original, and the
        # layer on the host is unchanged.
        layer_big = os.path.join(top, "data", "big")
        before = hashlib.sha256(open(layer_big, "rb").read()).hexdigest()
        assert before == big_sha
        sh(b, "echo scribble >> /data/big; echo mine > /root/hello2")
        assert sh(b, "tail -c 9 /data/big") == "scribble\n"
        e = sandboxes(image=snap1)
        out = sh(e, "sha256sum /data/big | cut -d' ' -f1; test -e /root/hello2 || echo no-hello2")
        assert out.split() == [big_sha, "no-hello2"]
        assert hashlib.sha256(open(layer_big, "rb").read()).hexdigest() == before
        assert not os.path.exists(os.path.join(top, "root", "hello2"))
        for sb in (b, e, original):
            sb.terminate()
    finally:
        delete_quietly(snap1)
    # snap2 is unnamed and unused now: prune takes it.
    prune_until_gone(moatd, snap2.id)
    with pytest.raises(moat.NotFound):
        moat.Image.from_name(snap2.id, socket=moatd.socket)


def test_snapshot_inherits_the_parent_config(moatd, sandboxes, debian_image):
    path = debian_image.config["env"][0]
    assert path.startswith("PATH=")
    sb = sandboxes(image=debian_image)
    assert sh(sb, "echo $PATH; pwd").split() == [path[5:], debian_image.config.get("workdir") or "/"]
    # The request's env wins over the image's.
    own = sandboxes(image=debian_image, env={"PATH": "/bin:/usr/bin"})
    assert sh(own, "echo $PATH").strip() == "/bin:/usr/bin"
    sh(sb, "echo x > /snapshot-marker")
    snap = sb.snapshot_filesystem()
    assert snap.config == debian_image.config and snap.parent == debian_image.id
    child = sandboxes(image=snap)
    assert sh(child, "echo $PATH; cat /snapshot-marker").split() == [path[5:], "x"]
    for s in (sb, own, child):
        s.terminate()
    prune_until_gone(moatd, snap.id)


def test_snapshot_of_a_stopped_sandbox_is_refused(moatd):
    sb = moat.Sandbox.create("true", socket=moatd.socket)
    try:
        sb.wait(timeout=30)
        with pytest.raises(moat.SandboxNotRunning):
            sb.snapshot_filesystem()
    finally:
        sb.terminate()
    with pytest.raises(moat.NotFound):
        sb.snapshot_filesystem()


# --- in use, delete, prune, inspect ----------------------------------------------

def wait_deleted(image, timeout=15):
    """Delete, retrying while the store still counts a sandbox being torn down."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            image.delete()
            return
        except moat.Conflict:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_in_use_images_cannot_be_deleted(moatd, sandboxes):
    base = sandboxes()
    sh(base, "echo v > /in-use")
    image = base.snapshot_filesystem(name="store/in-use")
    base.terminate()
    user = sandboxes(image="store/in-use")
    assert moat.Image.from_name("store/in-use", socket=moatd.socket).in_use
    with pytest.raises(moat.Conflict) as info:
        image.delete()
    assert info.value.code == "image_in_use" and info.value.status == 409
    status, body = raw_status(moatd, "DELETE", "/v1/images/store%2Fin-use")
    assert status == 409 and body["error"]["code"] == "image_in_use"
    # prune never takes it either, even once it has no name... (it still has one here)
    moat.Image.prune(socket=moatd.socket)
    assert moat.Image.from_name(image.id, socket=moatd.socket).id == image.id
    user.terminate()
    wait_deleted(image)
    with pytest.raises(moat.NotFound):
        moat.Image.from_name("store/in-use", socket=moatd.socket)
    assert not os.path.exists(os.path.join(store_dir(moatd), "manifests", image.id + ".json"))


def test_prune_removes_unnamed_and_orphans_but_never_in_use(moatd, sandboxes):
    base = sandboxes()
    sh(base, "echo a > /pruned")
    unused = base.snapshot_filesystem()
    sh(base, "echo b > /kept")
    used = base.snapshot_filesystem()
    holder = sandboxes(image=used)
    # A layer no manifest names, as a crash between a layer's commit and its
    # image's manifest would leave.
    orphan = os.path.join(store_dir(moatd), "layers", "ab" * 32)
    os.makedirs(os.path.join(orphan, "rootfs", "etc"))
    with open(os.path.join(orphan, "rootfs", "etc", "x"), "w") as f:
        f.write("orphan")

    result = moat.Image.prune(socket=moatd.socket)
    assert result["images_removed"] >= 1 and result["layers_removed"] >= 1, result
    with pytest.raises(moat.NotFound):
        moat.Image.from_name(unused.id, socket=moatd.socket)
    assert moat.Image.from_name(used.id, socket=moatd.socket).in_use
    assert all(os.path.isdir(layer_rootfs(moatd, layer)) for layer in used.layers if layer != "host")
    assert sh(holder, "cat /kept") == "b\n"
    deadline = time.monotonic() + 10  # removal may finish after the answer
    while (os.path.exists(orphan) or os.path.exists(layer_rootfs(moatd, unused.layers[-1]))) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(orphan)
    assert not os.path.exists(layer_rootfs(moatd, unused.layers[-1]))
    holder.terminate()
    base.terminate()
    prune_until_gone(moatd, used.id)


def test_inspect_by_name_and_id_and_cli(moatd, sandboxes):
    base = sandboxes()
    sh(base, "echo i > /inspected")
    done = moat_cli(moatd, "snapshot", base.id, "--name", "registry.local:5000/team/app:v2")
    assert done.returncode == 0, done
    image_id = done.stdout.decode().strip()
    assert image_id.startswith("img-")
    try:
        by_name = moat.Image.from_name("registry.local:5000/team/app:v2", socket=moatd.socket)
        by_id = moat.Image.from_name(image_id, socket=moatd.socket)
        assert by_name.id == by_id.id == image_id
        assert by_id.names == ["registry.local:5000/team/app:v2"]
        for ref in ("registry.local:5000/team/app:v2", image_id):
            done = moat_cli(moatd, "image", "inspect", ref)
            assert done.returncode == 0, done
            doc = json.loads(done.stdout)
            assert doc["id"] == image_id and doc["layers"] == by_id.layers
        listing = moat_cli(moatd, "image", "ls")
        assert listing.returncode == 0, listing
        lines = listing.stdout.decode().splitlines()
        assert lines[0].split() == ["NAME", "ID", "LAYERS", "SIZE", "CREATED"]
        row = [line for line in lines if line.startswith("registry.local:5000/team/app:v2")]
        assert row and row[0].split()[1:3] == [image_id, str(len(by_id.layers))]
        assert lines[-1].startswith("disk usage:") and "layers" in lines[-1]
        as_json = json.loads(moat_cli(moatd, "image", "ls", "--json").stdout)
        assert image_id in [i["id"] for i in as_json["images"]] and "disk_usage" in as_json
        assert moat.Image.disk_usage(socket=moatd.socket)["layers"] >= 1
        # in use: the CLI reports the refusal and exits non-zero
        child = sandboxes(image=image_id)
        busy = moat_cli(moatd, "image", "rm", "registry.local:5000/team/app:v2")
        assert busy.returncode == 125 and b"image_in_use" in busy.stderr, busy
        child.terminate()
        base.terminate()
        deadline = time.monotonic() + 15
        while True:
            done = moat_cli(moatd, "image", "rm", "registry.local:5000/team/app:v2")
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert done.returncode == 0 and done.stdout.decode().strip() == "registry.local:5000/team/app:v2", done
        pruned = moat_cli(moatd, "image", "prune")
        assert pruned.returncode == 0 and pruned.stdout.startswith(b"removed "), pruned
        missing = moat_cli(moatd, "image", "inspect", image_id)
        assert missing.returncode == 125 and b"image_not_found" in missing.stderr, missing
    finally:
        try:
            moat.Image.from_name(image_id, socket=moatd.socket).delete()
        except moat.Error:
            pass


def test_cli_usage_errors(moatd):
    for args in (("image", "inspect"), ("image", "pull"), ("image", "frob"), ("image", "ls", "--name", "x"),
                 ("image", "pull", DEBIAN_REF, "--name"), ("snapshot",), ("snapshot", "a", "b"),
                 ("snapshot", "sb-x", "--bogus")):
        done = moat_cli(moatd, *args)
        assert done.returncode == 2, (args, done)
    done = moat_cli(moatd, "snapshot", "sb-0000000000000000")
    assert done.returncode == 125 and b"not_found" in done.stderr, done
    assert moat_cli(moatd, "snapshot", "--help").returncode == 0


# --- bad references ---------------------------------------------------------------

BAD_NAMES = ["a..b", "a//b", "Upper", "x" * 300, "/abs", "-dash", "a b", "a%00b"]


def test_bad_references(moatd, sandboxes):
    from urllib.parse import quote
    for ref in BAD_NAMES + ["img-nope", "img-0000000000000000", "nope:latest"]:
        status, body = raw_status(moatd, "GET", "/v1/images/" + quote(ref, safe=""))
        assert status in (400, 404), (ref, status, body)
        assert "error" in body
        status, body = raw_status(moatd, "DELETE", "/v1/images/" + quote(ref, safe=""))
        assert status in (400, 404), (ref, status, body)
    with pytest.raises(moat.NotFound):
        moat.Image.from_name("img-nope", socket=moatd.socket)
    with pytest.raises(moat.NotFound):
        moat.Sandbox.create(image="img-nope", socket=moatd.socket)
    # As names given to the store they are refused outright.
    base = sandboxes()
    for name in BAD_NAMES:
        with pytest.raises(moat.InvalidArgument):
            base.snapshot_filesystem(name=name)
        with pytest.raises(moat.InvalidArgument):
            moat.Image.pull(DEBIAN_REF, name=name, socket=moatd.socket)
        with pytest.raises(moat.InvalidArgument):
            moat.Sandbox.create(image=name, socket=moatd.socket)
    for name in ("host", "img-0123456789abcdef"):
        with pytest.raises(moat.Conflict):
            moat.Image.pull(DEBIAN_REF, name=name, socket=moatd.socket)
    # A name that is a route in disguise never changes the route: %-encoded.
    with pytest.raises(moat.NotFound):
        moat.Image.from_name("../sandboxes", socket=moatd.socket)
    status, body = raw_status(moatd, "POST", "/v1/sandboxes/%s/snapshot" % base.id, b'{"name": 7}')
    assert status == 400
    status, body = raw_status(moatd, "POST", "/v1/sandboxes/%s/snapshot" % base.id, b'{"other": "x"}')
    assert status == 400
    assert moat.Image.list(socket=moatd.socket)  # still answering


# --- Debian pull ------------------------------------------------------------------

def pull_events(moatd, body):
    """POST /v1/images/pull over raw HTTP: (status, [events in arrival order])."""
    conn = moatd_harness.moat._transport.UnixHTTPConnection(moatd.socket, timeout=900)
    try:
        data = json.dumps(body).encode()
        conn.request("POST", "/v1/images/pull", body=data,
                     headers={"Content-Type": "application/json", "Content-Length": str(len(data))})
        resp = conn.getresponse()
        if resp.status != 200:
            return resp.status, [json.loads(resp.read() or b"{}")]
        assert "ndjson" in resp.getheader("Content-Type", "")
        events = []
        while True:
            line = resp.readline()
            if not line:
                return resp.status, events
            if line.strip():
                events.append(json.loads(line))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def debian_image(moatd):
    """debian:bookworm-slim pulled once per module: debootstrap the first time
    on this host (minutes), then an import of the cached tree (seconds)."""
    status, events = pull_events(moatd, {"ref": DEBIAN_REF})
    assert status == 200, events
    assert "image" in events[-1], events[-3:]
    progress = [e for e in events[:-1] if "progress" in e]
    assert progress and len(progress) == len(events) - 1, events[:5]
    yield moat.Image(moat.Client(moatd.socket), events[-1]["image"])


def test_pull_debian_and_run_in_it(moatd, sandboxes, debian_image):
    assert debian_image.names == [DEBIAN_REF] and len(debian_image.layers) == 1
    sb = sandboxes(image=DEBIAN_REF)
    assert sh(sb, "python3 -c 'print(1)'") == "1\n"
    assert sh(sb, "cat /etc/debian_version").strip().startswith("12")
    sb.terminate()

    # Again: cached, fast, the same layer and the same image.
    lines = []
    start = time.monotonic()
    again = moat.Image.pull(DEBIAN_REF, progress=lines.append, socket=moatd.socket)
    elapsed = time.monotonic() - start
    assert again.layers == debian_image.layers and again.id == debian_image.id
    assert lines, "no progress reported"
    assert elapsed < 120, elapsed  # the cache is imported, not rebuilt (minutes)

    # The CLI streams the progress lines (stderr) and prints the id (stdout).
    done = moat_cli(moatd, "image", "pull", DEBIAN_REF, "--name", "store/debian-copy", timeout=900)
    assert done.returncode == 0, done
    assert done.stdout.decode().strip() == debian_image.id
    assert done.stderr.decode().count("\n") >= 1
    names = moat.Image.from_name(debian_image.id, socket=moatd.socket).names
    assert sorted(names) == sorted([DEBIAN_REF, "store/debian-copy"])
    assert moat_cli(moatd, "image", "rm", "store/debian-copy").returncode == 0


def test_pull_refusals_and_failures(moatd):
    # Malformed references: refused before anything streams.
    for ref in ("alpine@sha256:1234", "debian:bookworm-slim@sha256:xyz"):
        status, events = pull_events(moatd, {"ref": ref})
        assert status == 400 and events[0]["error"]["code"], (ref, events)
        with pytest.raises(moat.InvalidArgument):
            moat.Image.pull(ref, socket=moatd.socket)
    # A registry that is not there: an error event ends the stream, never an image.
    unreachable = "127.0.0.1:1/nothing/here:1"
    status, events = pull_events(moatd, {"ref": unreachable})
    if status == 200:
        assert "error" in events[-1] and not any("image" in e for e in events), events
        assert all("progress" in e for e in events[:-1]), events
    else:
        assert status in (400, 404) and events[0]["error"]["code"], events
    seen = []
    with pytest.raises(moat.Error) as info:
        moat.Image.pull(unreachable, progress=seen.append, socket=moatd.socket)
    assert info.value.code != "error" and info.value.message
    with pytest.raises(moat.NotFound):
        moat.Image.from_name(unreachable, socket=moatd.socket)
    done = moat_cli(moatd, "image", "pull", unreachable)
    assert done.returncode == 125 and done.stdout == b"" and b"moat: " in done.stderr, done
    for body in (b'{}', b'{"ref": 7}', b'{"ref": "debian:bookworm-slim", "x": 1}', b'[', b''):
        status, _ = raw_status(moatd, "POST", "/v1/images/pull", body)
        assert status == 400, body


@pytest.fixture(scope="module")
def registries():
    import registry_fixture
    missing = registry_fixture.missing_tools()
    if missing:
        pytest.skip("no %s on this host" % ", ".join(missing))
    running = registry_fixture.Registries().start()
    try:
        yield running.info
    finally:
        running.close()


def test_registry_pull_with_credentials_sdk_and_cli(moatd, registries):
    """The user surface of a registry pull (the pull itself is tested in
    depth with the registry fixture's other images): credentials, progress,
    the image's config, the CLI's --password-stdin."""
    ref = "127.0.0.1:%d/test/img:1" % registries["basic"]["port"]
    with pytest.raises(moat.Error) as info:
        moat.Image.pull(ref, socket=moatd.socket)
    assert info.value.code == "unauthorized", info.value
    lines = []
    image = moat.Image.pull(ref, name="store/from-registry", username=registries["username"],
                            password=registries["password"], progress=lines.append, socket=moatd.socket)
    try:
        assert lines and image.names == ["store/from-registry"] and len(image.layers) == 2
        assert "MOAT_ARCH=amd64" in image.config["env"]  # linux/amd64 chosen from the index
        cli = subprocess.run([os.path.join(moatd_harness.build_dir(), "src", "cli", "moat"), "--socket",
                              moatd.socket, "image", "pull", ref, "--name", "store/from-cli",
                              "--username", registries["username"], "--password-stdin"],
                             input=(registries["password"] + "\n").encode(), capture_output=True, timeout=300)
        assert cli.returncode == 0, cli
        assert cli.stdout.decode().strip() == image.id  # same layers and config: the same image
        assert registries["password"].encode() not in cli.stderr + cli.stdout
        assert moat_cli(moatd, "image", "pull", ref, "--password-stdin").returncode == 2
    finally:
        delete_quietly(image)


# --- last: nothing staged is left behind -------------------------------------------

def test_store_has_no_staging_leftovers(moatd):
    deadline = time.monotonic() + 10
    while True:
        left = [n for n in os.listdir(store_dir(moatd)) if n.startswith(".tmp-")]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == []
