"""OCI images end to end: import of an OCI layout, a docker-save tar, and a
registry pull (from Debian's docker-registry on loopback, pushed with
skopeo), each run in a sandbox that checks layers, whiteouts, opaque
directories and the config; and archives that must be refused whole."""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse

import http.client
import socket

import pytest

import registry_fixture
from registry_fixture import Layout

PROBE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
    char cwd[4096];
    struct stat st;
    printf("cwd=%s\n", getcwd(cwd, sizeof cwd) ? cwd : "?");
    printf("FOO=%s\n", getenv("FOO") ? getenv("FOO") : "");
    for (int i = 1; i < argc; i++)
        printf("%s=%s\n", argv[i], stat(argv[i], &st) == 0 ? "present" : "missing");
    return 0;
}
"""


class _Connection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=300)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(300)
        self.sock.connect(self.socket_path)


def api(moatd, method, path, body=None):
    """(status, decoded JSON body)."""
    connection = _Connection(moatd.socket)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body))
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        connection.close()


def api_ndjson(moatd, method, path, body=None):
    """(status, [events]) of an NDJSON stream."""
    connection = _Connection(moatd.socket)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body))
        response = connection.getresponse()
        data = response.read().decode()
        if response.status != 200:
            return response.status, [json.loads(data)]
        return 200, [json.loads(line) for line in data.splitlines() if line.strip()]
    finally:
        connection.close()


@pytest.fixture(scope="module")
def probe():
    """A static program to look around inside an image that has no shell."""
    work = tempfile.mkdtemp(prefix="moat-probe-")
    try:
        source = os.path.join(work, "probe.c")
        with open(source, "w") as f:
            f.write(PROBE_C)
        binary = os.path.join(work, "probe")
        done = subprocess.run(["cc", "-static", "-O2", "-o", binary, source], capture_output=True)
        if done.returncode != 0:
            pytest.skip("no static libc to build the probe: %s" % done.stderr.decode()[-200:])
        with open(binary, "rb") as f:
            yield f.read()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def layer(layout, files):
    """Like Layout.layer, with modes: {path: bytes | (bytes, mode)}."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            data, mode = content if isinstance(content, tuple) else (content, 0o644)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1700000000
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return (layout.blob(gzip.compress(tar_bytes, mtime=0), registry_fixture.MEDIA_LAYER_GZIP),
            "sha256:" + hashlib.sha256(tar_bytes).hexdigest())


def write_image(path, layers, env, workdir="/a"):
    """An OCI layout at path with one linux/amd64 image tagged "1"."""
    layout = Layout(path)
    built = [layer(layout, files) for files in layers]
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": env, "WorkingDir": workdir, "Cmd": ["/probe"]},
              "rootfs": {"type": "layers", "diff_ids": [d for _, d in built]}}
    manifest = {"schemaVersion": 2, "mediaType": registry_fixture.MEDIA_MANIFEST,
                "config": layout.blob(json.dumps(config).encode(), registry_fixture.MEDIA_CONFIG),
                "layers": [descriptor for descriptor, _ in built]}
    descriptor = layout.blob(json.dumps(manifest).encode(), registry_fixture.MEDIA_MANIFEST)
    layout.tag(descriptor, "1")
    return layout


def whiteout_layers(probe):
    return [
        {"probe": (probe, 0o755), "a/file1": b"one", "a/file2": b"two", "d/x": b"x", "e/keep": b"k"},
        {"a/.wh.file1": b"", "d/.wh..wh..opq": b"", "d/y": b"y", "e/new": b"n"},
    ]


def image_request(moatd, method, ref, body=None):
    return api(moatd, method, "/v1/images/" + urllib.parse.quote(ref, safe=""), body)


def run_probe(moatd, image, *paths):
    status, sandbox = api(moatd, "POST", "/v1/sandboxes", {"image": image})
    assert status == 201, sandbox
    try:
        status, result = api(moatd, "POST", "/v1/sandboxes/%s/run" % sandbox["id"], {"argv": ["/probe", *paths]})
        assert status == 200 and result["exit_code"] == 0, result
        return dict(line.split("=", 1) for line in result["stdout"].splitlines())
    finally:
        api(moatd, "DELETE", "/v1/sandboxes/" + sandbox["id"])


def check_whiteouts(seen):
    assert seen["/a/file1"] == "missing"      # whited out by the upper layer
    assert seen["/a/file2"] == "present"
    assert seen["/d/x"] == "missing"          # d is opaque in the upper layer
    assert seen["/d/y"] == "present"
    assert seen["/e/keep"] == "present" and seen["/e/new"] == "present"


def store_leftovers(moatd):
    images = os.path.join(moatd.data_dir, "images")
    return [name for name in os.listdir(images) if name.startswith(".tmp-")]


def test_import_oci_layout_with_whiteouts_and_config(moatd, probe, tmp_path):
    write_image(str(tmp_path / "layout"), whiteout_layers(probe), ["FOO=bar", "PATH=/"])
    status, image = api(moatd, "POST", "/v1/images/import",
                                           {"path": str(tmp_path / "layout"), "name": "oci:whiteouts"})
    assert status == 201, image
    assert len(image["layers"]) == 2
    assert image["config"]["workdir"] == "/a" and "FOO=bar" in image["config"]["env"]
    seen = run_probe(moatd, "oci:whiteouts", "/a/file1", "/a/file2", "/d/x", "/d/y", "/e/keep", "/e/new")
    check_whiteouts(seen)
    assert seen["cwd"] == "/a" and seen["FOO"] == "bar"
    # The layers are content-addressed by their diff_ids, stored once.
    status, again = api(moatd, "POST", "/v1/images/import",
                                           {"path": str(tmp_path / "layout"), "name": "oci:again"})
    assert status == 201 and again["layers"] == image["layers"]
    for name in ("oci:whiteouts", "oci:again"):
        assert image_request(moatd, "DELETE", name)[0] == 200


def test_import_docker_archive_tar(moatd, probe, tmp_path):
    write_image(str(tmp_path / "layout"), whiteout_layers(probe), ["FOO=docker"])
    archive = str(tmp_path / "saved.tar")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    subprocess.run(["skopeo", "--policy", str(policy), "copy", "--quiet",
                    "oci:%s:1" % (tmp_path / "layout"), "docker-archive:%s:saved:1" % archive],
                   check=True, capture_output=True, env={**os.environ, "HOME": str(tmp_path)})
    status, image = api(moatd, "POST", "/v1/images/import", {"path": archive, "name": "saved"})
    assert status == 201, image
    seen = run_probe(moatd, "saved", "/a/file1", "/a/file2", "/d/x", "/d/y", "/e/keep", "/e/new")
    check_whiteouts(seen)
    assert seen["FOO"] == "docker"
    assert image_request(moatd, "DELETE", "saved")[0] == 200


@pytest.mark.parametrize("name,files", [
    ("dotdot", {"../escape": b"x"}),
    ("absolute", {"/tmp/moat-absolute-escape": b"x"}),
    ("deep-dotdot", {"a/../../escape": b"x"}),
])
def test_malicious_layers_are_refused_whole(moatd, tmp_path, name, files):
    outside = tmp_path / "escape"
    layout_dir = tmp_path / "layers" / "layout"
    write_image(str(layout_dir), [{"ok": b"fine"}, files], [])
    before = sorted(os.listdir(tmp_path))
    status, body = api(moatd, "POST", "/v1/images/import",
                                          {"path": str(layout_dir), "name": "bad-" + name})
    assert status == 400 and body["error"]["code"] == "bad_layer", body
    assert sorted(os.listdir(tmp_path)) == before and not outside.exists()
    assert not os.path.exists("/tmp/moat-absolute-escape")
    assert image_request(moatd, "GET", "bad-" + name)[0] == 404
    assert store_leftovers(moatd) == []


def test_digest_mismatch_is_refused(moatd, probe, tmp_path):
    layout = write_image(str(tmp_path / "layout"), [{"probe": (probe, 0o755)}, {"f": b"data"}], [])
    manifest = json.load(open(os.path.join(layout.path, "index.json")))["manifests"][0]
    manifest = json.load(open(layout.blob_path(manifest["digest"])))
    blob = layout.blob_path(manifest["layers"][1]["digest"])
    data = bytearray(open(blob, "rb").read())
    data[-10] ^= 0xFF  # same size, other bytes
    os.chmod(blob, 0o644)
    with open(blob, "wb") as f:
        f.write(data)
    status, body = api(moatd, "POST", "/v1/images/import",
                                          {"path": str(tmp_path / "layout"), "name": "tampered"})
    assert status == 400 and body["error"]["code"] == "digest_mismatch", body
    assert store_leftovers(moatd) == []


def test_truncated_archive_is_refused(moatd, tmp_path):
    write_image(str(tmp_path / "layout"), [{"f": b"x" * 100000}], [])
    archive = tmp_path / "x.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(str(tmp_path / "layout"), arcname=".")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    status, body = api(moatd, "POST", "/v1/images/import", {"path": str(archive), "name": "cut"})
    assert status == 400, body
    assert store_leftovers(moatd) == []


@pytest.fixture(scope="module")
def registries():
    missing = registry_fixture.missing_tools()
    if missing:
        pytest.skip("registry tests need %s" % ", ".join(missing))
    registry = registry_fixture.Registries().start()
    yield registry
    registry.close()


def pull(moatd, ref, name=None, **extra):
    """POST /v1/images/pull; returns (progress lines, final event)."""
    body = {"ref": ref, **extra}
    if name:
        body["name"] = name
    status, events = api_ndjson(moatd, "POST", "/v1/images/pull", body)
    assert status == 200, events
    return [e["progress"] for e in events if "progress" in e], events[-1]


def test_registry_pull_picks_amd64_and_verifies(moatd, registries):
    port = registries.info["open"]["port"]
    progress, final = pull(moatd, "127.0.0.1:%d/test/img:1" % port, "pulled")
    assert "image" in final, final
    assert any(line.startswith("blob ") for line in progress)
    image = final["image"]
    assert len(image["layers"]) == 2
    assert "MOAT_ARCH=amd64" in image["config"]["env"]
    # Again: the blobs come from the cache, the layers are the same.
    progress, again = pull(moatd, "127.0.0.1:%d/test/img:1" % port, "pulled-again")
    assert again["image"]["layers"] == image["layers"]
    # By digest.
    digest = registries.info["images"]["single_digest"]
    _, by_digest = pull(moatd, "127.0.0.1:%d/test/img@%s" % (port, digest), "by-digest")
    assert by_digest["image"]["layers"] == image["layers"]
    for name in ("pulled", "pulled-again", "by-digest"):
        assert image_request(moatd, "DELETE", name)[0] == 200


def test_registry_pull_failures(moatd, registries):
    port = registries.info["open"]["port"]
    _, final = pull(moatd, "127.0.0.1:%d/test/corrupt:1" % port)
    assert final["error"]["code"] == "digest_mismatch"
    _, final = pull(moatd, "127.0.0.1:%d/test/nope:1" % port)
    assert final["error"]["code"] == "not_found"
    _, final = pull(moatd, "127.0.0.1:%d/test/armonly:1" % port)
    assert final["error"]["code"] == "no_matching_platform"
    assert store_leftovers(moatd) == []


def test_registry_pull_with_token_auth(moatd, registries):
    port = registries.info["token"]["port"]
    _, final = pull(moatd, "127.0.0.1:%d/test/img:single" % port, "tok")
    assert final["error"]["code"] == "unauthorized"
    _, final = pull(moatd, "127.0.0.1:%d/test/img:single" % port, "tok",
                    username=registries.info["username"], password=registries.info["password"])
    assert "image" in final, final
    assert image_request(moatd, "DELETE", "tok")[0] == 200


def test_image_command_runs_entrypoint_and_cmd(moatd, probe, tmp_path):
    """Entrypoint + Cmd run only when asked: image_command, or `moat run -I` without a command."""
    write_image(str(tmp_path / "layout"), whiteout_layers(probe), ["FOO=cmd"])
    status, _ = api(moatd, "POST", "/v1/images/import", {"path": str(tmp_path / "layout"), "name": "with-cmd"})
    assert status == 201
    # Without image_command the sandbox runs nothing of the image's.
    status, plain = api(moatd, "POST", "/v1/sandboxes", {"image": "with-cmd"})
    assert status == 201 and plain["entrypoint"] is None
    api(moatd, "DELETE", "/v1/sandboxes/" + plain["id"])
    status, sandbox = api(moatd, "POST", "/v1/sandboxes", {"image": "with-cmd", "image_command": True})
    assert status == 201 and sandbox["entrypoint"] == ["/probe"], sandbox
    status, done = api(moatd, "POST", "/v1/sandboxes/%s/wait?timeout=30" % sandbox["id"])
    assert done["state"] == "stopped" and done["exit_code"] == 0, done
    api(moatd, "DELETE", "/v1/sandboxes/" + sandbox["id"])
    binary = os.path.join(os.environ.get("MOAT_BUILD", "/work/main/build"), "src", "cli", "moat")
    run = subprocess.run([binary, "--socket", moatd.socket, "run", "-I", "with-cmd"], capture_output=True, timeout=60)
    assert run.returncode == 0 and b"FOO=cmd" in run.stdout and b"cwd=/a" in run.stdout, run
    assert api(moatd, "DELETE", "/v1/images/with-cmd")[0] == 200
    # An image without Entrypoint or Cmd (the host image): a clear 400.
    status, body = api(moatd, "POST", "/v1/sandboxes", {"image": "host", "image_command": True})
    assert status == 400 and "Entrypoint" in body["error"]["message"], body
