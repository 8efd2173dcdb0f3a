"""moat.image_builder.ImageSpec against a real moatd: a compact build with a
local file, a directory and env, a sandbox of it, and the step cache."""

import io
import os
import tarfile

import pytest

import moat
from moat.image_builder import BuildError, ImageSpec


def test_build_copy_env_and_cache(sock, tmp_path):
    (tmp_path / "app.py").write_text("print('hello from app')\n")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "data.txt").write_text("data\n")
    os.chmod(tmp_path / "assets" / "data.txt", 0o640)
    spec = (ImageSpec.from_image("host")
            .env({"APP_MODE": "test"})
            .copy_local_file(str(tmp_path / "app.py"), "/srv/")
            .copy_local_dir(str(tmp_path / "assets"), "/srv/assets")
            .workdir("/srv")
            .run_commands("echo building", "python3 app.py > built.txt"))
    logs, steps = [], []
    image = spec.build("sdk-built:1", on_log=lambda step, line: logs.append((step, line)),
                       on_step=lambda step, kind, cached: steps.append((step, kind, cached)))
    assert isinstance(image, moat.Image) and image.id.startswith("img-")
    assert "sdk-built:1" in image.names
    assert steps == [(0, "env", False), (1, "copy", False), (2, "copy", False), (3, "workdir", False),
                     (4, "run", False)]
    assert (4, "building") in logs

    with moat.Sandbox.create(image=image, socket=sock) as sb:
        p = sb.exec("sh", "-c", "pwd; echo $APP_MODE; cat built.txt assets/data.txt; "
                                "stat -c '%a %u:%g' /srv/app.py /srv/assets/data.txt")
        assert p.stdout.read().splitlines() == ["/srv", "test", "hello from app", "data", "644 0:0", "640 0:0"]
        assert p.wait() == 0

    # Unchanged: all cached, same image. Touching a file changes nothing.
    os.utime(tmp_path / "app.py", (1, 1))
    steps.clear()
    again = spec.build("sdk-built:1", on_step=lambda step, kind, cached: steps.append(cached))
    assert again.id == image.id and steps == [True] * 5

    # A new last step: only it runs, and earlier specs are unchanged.
    longer = spec.env({"EXTRA": "1"})
    steps.clear()
    third = longer.build("sdk-built:2", on_step=lambda step, kind, cached: steps.append(cached))
    assert steps == [True] * 5 + [False] and third.id != image.id
    assert "EXTRA=1" in third.config["env"] and len(spec.steps) == 5


def test_context_tar_is_deterministic_and_root_owned(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_text("b")
    (tmp_path / "d" / "a").write_text("a")
    os.symlink("/etc/passwd", tmp_path / "d" / "link")
    spec = ImageSpec.debian().copy_local_file(str(tmp_path / "f"), "/f").copy_local_dir(str(tmp_path / "d"), "/d")
    data = spec.context_tar()
    assert data == spec.context_tar()
    members = tarfile.open(fileobj=io.BytesIO(data)).getmembers()
    assert [m.name for m in members] == ["0", "0/f", "1", "1/a", "1/b", "1/link"]
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members)
    assert members[-1].issym() and members[-1].linkname == "/etc/passwd"  # kept as a link, not read
    assert spec.to_json() == {"from": "debian:bookworm-slim", "steps": [
        {"copy": {"src": "0/f", "dest": "/f"}}, {"copy": {"src": "1", "dest": "/d"}}]}


def test_failures(sock):
    with pytest.raises(BuildError) as caught:
        ImageSpec.from_image("host").run_commands("echo about to fail", "exit 4").build("sdk-broken:1")
    assert caught.value.step == 0 and "code 4" in caught.value.message
    with pytest.raises(moat.NotFound):
        moat.Image.from_name("sdk-broken:1", socket=sock)
    with pytest.raises(moat.InvalidArgument):
        ImageSpec.from_image("host").run_commands("true").build("Not A Name")
    with pytest.raises(moat.InvalidArgument):
        ImageSpec.from_image("host").workdir("relative")
    with pytest.raises(moat.InvalidArgument):
        ImageSpec.from_image("host").env({"A": 1})
    spec = ImageSpec.from_image("host")
    for i in range(50):
        spec = spec.env({"N": str(i)})
    with pytest.raises(moat.InvalidArgument):
        spec.env({"N": "51"})
