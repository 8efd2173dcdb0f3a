"""moat.Image and Sandbox.snapshot_filesystem against a real moatd."""

import time

import pytest

import moat


def test_pull_with_progress_then_sandbox_from_the_image(sock):
    lines = []
    image = moat.Image.pull("debian:bookworm-slim", progress=lines.append)
    assert lines and all(isinstance(line, str) for line in lines)
    assert image.id.startswith("img-") and image.name == "debian:bookworm-slim"
    assert len(image.layers) == 1 and image.parent is None and image.size > 0
    assert any(e.startswith("PATH=") for e in image.config["env"])
    assert moat.Image.from_name("debian:bookworm-slim") == image
    with moat.Sandbox.create(image=image) as sb:
        assert sb.run("python3 -c 'print(1)'").stdout == "1\n"
    with pytest.raises(moat.InvalidArgument):
        moat.Image.pull("alpine@sha256:1234", progress=lines.append)
    with pytest.raises(moat.Error) as info:  # failed mid-stream: an error event
        moat.Image.pull("127.0.0.1:1/nothing:1", progress=lines.append)
    assert info.value.code not in ("error", "internal") and info.value.message


def test_snapshot_filesystem_list_and_delete(sock):
    with moat.Sandbox.create() as sb:
        assert sb.run("echo kept > /kept && rm /etc/os-release").ok
        snap = sb.snapshot_filesystem(name="sdk/snap:1")
        assert snap.snapshot_ms is not None and snap.snapshot_ms < 2000
        assert snap.names == ["sdk/snap:1"] and snap.parent == "img-host"
        assert snap.created_at and len(snap.layers) == 2
        with moat.Sandbox.create(image=snap) as child:
            assert child.run("cat /kept; test -e /etc/os-release || echo gone").stdout == "kept\ngone\n"
            with pytest.raises(moat.Conflict) as info:
                snap.delete()
            assert info.value.code == "image_in_use"
            assert snap.refresh().in_use
    assert snap.id in [i.id for i in moat.Image.list()]
    deadline = time.monotonic() + 15
    while True:  # the sandboxes above may still be tearing down
        try:
            snap.delete()
            break
        except moat.Conflict:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert snap.id not in [i.id for i in moat.Image.list()]
    with pytest.raises(moat.NotFound):
        moat.Image.from_name("sdk/snap:1")
    with pytest.raises(moat.NotFound):
        snap.delete()
    assert set(moat.Image.prune()) == {"images_removed", "layers_removed", "bytes_freed"}
