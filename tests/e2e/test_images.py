"""A plain root filesystem directory imported as an image (`moat image import`),
sandboxes on it, and the image store's refusals."""

import os
import shutil
import subprocess

import pytest

import moatd_harness
from moatd_harness import moat


def moat_cli(moatd, *args):
    binary = os.path.join(moatd_harness.build_dir(), "src", "cli", "moat")
    return subprocess.run([binary, "--socket", moatd.socket, *args], capture_output=True, timeout=60)


def copy_with_libraries(binary, root):
    """Copy a dynamic binary and every library ldd names into root, at the same paths."""
    paths = {os.path.realpath(binary): binary}
    for line in subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                paths[os.path.realpath(word)] = word
    for real, name in paths.items():
        target = os.path.join(root, name.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(real, target)


@pytest.fixture
def tiny_rootfs(tmp_path):
    root = tmp_path / "rootfs"
    for d in ("bin", "etc", "tmp", "proc", "dev", "sys"):
        (root / d).mkdir(parents=True)
    for tool in ("/bin/sh", "/bin/cat", "/bin/ls"):
        copy_with_libraries(tool, str(root))
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "marker").write_text("from the imported image\n")
    os.symlink("marker", root / "etc" / "link")
    return str(root)


def test_import_run_and_remove(moatd, tiny_rootfs):
    done = moat_cli(moatd, "image", "import", tiny_rootfs, "tiny")
    assert done.returncode == 0, done
    assert b"tiny" in moat_cli(moatd, "image", "ls").stdout
    again = moat_cli(moatd, "image", "import", tiny_rootfs, "tiny")
    assert again.returncode != 0 and b"conflict" in again.stderr

    sb = moat.Sandbox.create(image="tiny", socket=moatd.socket)
    try:
        r = sb.exec("/bin/sh", "-c", "cat /etc/link; ls /; echo $$")
        out = r.stdout.read()
        assert r.wait() == 0
        assert "from the imported image" in out
        assert "usr" not in out.split()  # not the host image: no host /usr
        # Root-owned image files appear root-owned inside (idmapped layer) and
        # writes land in the sandbox's private layer, not in the image.
        owner = sb.exec("/bin/ls", "-ln", "/etc/passwd").stdout.read().split()
        assert owner[2:4] == ["0", "0"], owner
        w = sb.exec("/bin/sh", "-c", "echo changed > /etc/marker && cat /etc/marker")
        assert w.stdout.read() == "changed\n" and w.wait() == 0
        busy = moat_cli(moatd, "image", "rm", "tiny")
        assert busy.returncode != 0 and b"image_in_use" in busy.stderr
    finally:
        sb.terminate()
    with open(os.path.join(tiny_rootfs, "etc", "marker")) as f:
        assert f.read() == "from the imported image\n"
    fresh = moat.Sandbox.create(image="tiny", socket=moatd.socket)
    try:
        p = fresh.exec("/bin/cat", "/etc/marker")
        assert p.stdout.read() == "from the imported image\n"
    finally:
        fresh.terminate()
    assert moat_cli(moatd, "image", "rm", "tiny").returncode == 0
    assert b"tiny" not in moat_cli(moatd, "image", "ls").stdout


def test_import_refusals(moatd, tmp_path):
    assert moat_cli(moatd, "image", "import", "relative/dir", "x").returncode != 0
    assert moat_cli(moatd, "image", "import", str(tmp_path / "missing"), "x").returncode != 0
    assert moat_cli(moatd, "image", "import", str(tmp_path), "../escape").returncode != 0
    done = moat_cli(moatd, "image", "rm", "host")
    assert done.returncode != 0
    with pytest.raises(moat.NotFound):
        moat.Sandbox.create(image="no-such-image", socket=moatd.socket)
