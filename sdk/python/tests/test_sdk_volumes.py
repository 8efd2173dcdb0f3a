"""moat.Volume against a real moatd: the SDK's shape (from_name, list,
delete, the file methods) and Sandbox.create(volumes=...)."""

import pytest

import moat
from moat.volume import Volume  # also moat.Volume once __init__ exports it


@pytest.fixture(autouse=True)
def no_volumes_left(sock):
    yield
    for sb in moat.Sandbox.list():
        sb.terminate()
    for vol in Volume.list():
        Volume.delete(vol)
    assert Volume.list() == []


def test_from_name_create_if_missing_and_list(sock):
    with pytest.raises(moat.NotFound):
        Volume.from_name("sdk-a")
    vol = Volume.from_name("sdk-a", create_if_missing=True, size_mib=16)
    assert (vol.name, vol.size_mib) == ("sdk-a", 16)
    again = Volume.from_name("sdk-a", create_if_missing=True, size_mib=999)
    assert again.size_mib == 16  # existing volume: size unchanged
    assert [v.name for v in Volume.list()] == ["sdk-a"]
    Volume.delete("sdk-a")
    assert Volume.list() == []


def test_files_from_outside_and_inside(sock):
    vol = Volume.from_name("sdk-files", create_if_missing=True, size_mib=16)
    vol.write_file("/greeting", "hello")
    assert vol.read_file("/greeting") == b"hello"
    with moat.Sandbox.create(volumes={"/data": vol, "/ro": vol.read_only()}) as sb:
        assert sb.run("cat /data/greeting").stdout == "hello"
        assert sb.run("mkdir /data/sub && echo in > /data/sub/f").exit_code == 0
        assert sb.run("touch /ro/x").exit_code != 0
        assert sb.info["volumes"] == {"/data": {"name": "sdk-files", "read_only": False},
                                      "/ro": {"name": "sdk-files", "read_only": True}}
        with pytest.raises(moat.Conflict):
            Volume.delete(vol)
    listing = {e["name"]: e["type"] for e in vol.listdir("/")}
    assert listing == {"greeting": "file", "sub": "dir"}
    assert vol.read_file("/sub/f") == b"in\n"
    vol.remove("/sub", recursive=True)
    vol.remove("/greeting")
    assert vol.listdir() == []
    assert vol.refresh().used_bytes >= 0


def test_volume_names_in_create_and_bad_values(sock):
    Volume.create("sdk-named", size_mib=8)
    with moat.Sandbox.create(volumes={"/data": "sdk-named"}) as sb:
        assert sb.run("test -d /data").exit_code == 0
    with pytest.raises(TypeError):
        moat.Sandbox.create(volumes={"/data": 42})
    with pytest.raises(moat.InvalidArgument):
        Volume.create("Bad/Name")
