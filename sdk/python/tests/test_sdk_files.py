"""sb.files: the SDK surface of the files API, against a real moatd."""

import io
import os

import moat
import pytest


def test_read_write_text_bytes_and_file_objects(sandbox):
    files = sandbox.files
    assert files.write("/tmp/t.txt", "text ✓") == len("text ✓".encode())
    assert files.read_text("/tmp/t.txt") == "text ✓"
    data = os.urandom(5 * 1024 * 1024 + 7)  # more than one 4 MiB chunk
    files.write("/tmp/b.bin", data, mode=0o600)
    assert files.read("/tmp/b.bin") == data
    files.write("/tmp/f.bin", io.BytesIO(data), mode="0640")
    assert files.read("/tmp/f.bin") == data
    assert files.stat("/tmp/f.bin").mode == "0640"
    with files.open("/tmp/f.bin", offset=5, length=3) as stream:
        assert stream.read() == data[5:8]


def test_make_dirs_and_metadata(sandbox):
    files = sandbox.files
    with pytest.raises(moat.NotFound):
        files.write("/tmp/deep/er/x", "x")
    files.write("/tmp/deep/er/x", "x", make_dirs=True)
    assert files.exists("/tmp/deep/er/x") and not files.exists("/tmp/deep/nope")
    info = files.stat("/tmp/deep/er")
    assert info.is_dir and info.type == "dir" and info.uid == 0
    assert [e.path for e in files.list("/tmp/deep", depth=2)] == ["/tmp/deep/er", "/tmp/deep/er/x"]
    files.mkdir("/tmp/m1/m2")
    files.move("/tmp/deep/er/x", "/tmp/m1/m2/y")
    files.chmod("/tmp/m1/m2/y", 0o700)
    assert files.stat("/tmp/m1/m2/y").mode == "0700"
    files.remove("/tmp/m1", recursive=True)
    assert not files.exists("/tmp/m1")


def test_errors_map_to_exceptions(sandbox):
    files = sandbox.files
    with pytest.raises(moat.InvalidArgument):
        files.read("relative")
    with pytest.raises(moat.NotFound):
        files.read("/no/such/file")
    files.mkdir("/tmp/d")
    with pytest.raises(moat.Conflict) as caught:
        files.read("/tmp/d")
    assert caught.value.code == "is_a_directory"


def test_upload_dir_and_download_dir(sandbox, tmp_path):
    source = tmp_path / "src"
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "b" / "f.txt").write_text("deep")
    (source / "top.bin").write_bytes(b"\0\1\2")
    sandbox.files.upload_dir(str(source), "/tmp/tree")
    assert sandbox.files.read("/tmp/tree/a/b/f.txt") == b"deep"
    result = sandbox.run("cat /tmp/tree/a/b/f.txt")
    assert result.returncode == 0 and "deep" in str(result.stdout)
    out = tmp_path / "out"
    sandbox.files.download_dir("/tmp/tree", str(out))
    assert (out / "a" / "b" / "f.txt").read_text() == "deep"
    assert (out / "top.bin").read_bytes() == b"\0\1\2"
    with pytest.raises(moat.Conflict):
        sandbox.files.download_dir("/tmp/tree/top.bin", str(tmp_path / "x"))


def test_upload_dir_larger_than_one_request(sandbox, tmp_path):
    """A tree over moatd's 8 MiB request cap goes in batches, big files chunked."""
    import hashlib
    source = tmp_path / "big"
    (source / "a" / "b").mkdir(parents=True)
    digests = {}
    for i in range(24):  # 24 x 512 KiB = 12 MiB in small files
        data = os.urandom(512 * 1024)
        path = source / "a" / ("f%02d" % i)
        path.write_bytes(data)
        digests["a/f%02d" % i] = hashlib.sha256(data).hexdigest()
    large = os.urandom(10 * 1024 * 1024)  # one file over a batch
    (source / "a" / "b" / "large").write_bytes(large)
    digests["a/b/large"] = hashlib.sha256(large).hexdigest()
    sandbox.files.upload_dir(str(source), "/tmp/bigtree")
    out = sandbox.run("cd /tmp/bigtree && find . -type f | sort | xargs sha256sum").stdout
    seen = {line.split()[1][2:]: line.split()[0] for line in out.splitlines()}
    assert seen == digests
