"""Error mapping and transport failures: no daemon needed."""

import socket
import threading

import pytest

import moat
from moat import errors
from moat._transport import build_path


@pytest.mark.parametrize("status,code,cls", [
    (400, "invalid_argument", moat.InvalidArgument),
    (404, "not_found", moat.NotFound),
    (404, "exec_not_found", moat.ExecNotFound),
    (405, "method_not_allowed", moat.MethodNotAllowed),
    (409, "conflict", moat.Conflict),
    (409, "sandbox_not_running", moat.SandboxNotRunning),
    (409, "stdin_closed", moat.StdinClosed),
    (413, "payload_too_large", moat.PayloadTooLarge),
    (429, "limit_exceeded", moat.LimitExceeded),
    (429, "output_too_large", moat.OutputTooLarge),
    (500, "internal", moat.InternalError),
    (500, "system", moat.InternalError),
    (503, "unavailable", moat.Unavailable),
    (504, "timeout", moat.Timeout),
    # Unknown codes map by status.
    (404, "brand_new_code", moat.NotFound),
    (409, "image_taken_somehow", moat.Conflict),
    (429, "too_many_widgets", moat.LimitExceeded),
    (502, "bad_gateway", moat.InternalError),
    (418, "teapot", moat.Error),
])
def test_codes_map_to_exception_classes(status, code, cls):
    exc = errors.error_from_response(status, code, "msg")
    assert type(exc) is cls
    assert exc.code == code and exc.status == status and exc.message == "msg"
    assert "msg" in str(exc) and code in str(exc)


def test_hierarchy():
    assert issubclass(moat.ExecNotFound, moat.NotFound)
    assert issubclass(moat.SandboxNotRunning, moat.Conflict)
    assert issubclass(moat.SandboxNotRunning, moat.SandboxTerminated)
    for cls in (moat.InvalidArgument, moat.NotFound, moat.Conflict, moat.LimitExceeded,
                moat.Timeout, moat.Unavailable, moat.InternalError):
        assert issubclass(cls, moat.Error)


def test_missing_socket_is_unavailable_with_a_hint(tmp_path, monkeypatch):
    path = str(tmp_path / "nope.sock")
    with pytest.raises(moat.Unavailable) as info:
        moat.Sandbox.create(socket=path)
    assert "is moatd running?" in str(info.value) and path in str(info.value)
    monkeypatch.setenv("MOAT_SOCKET", path)
    with pytest.raises(moat.Unavailable) as info:
        moat.Sandbox.list()
    assert path in str(info.value)


def test_default_socket_path(monkeypatch):
    monkeypatch.delenv("MOAT_SOCKET", raising=False)
    assert moat.Client().socket_path == "/run/moat/moatd.sock"
    monkeypatch.setenv("MOAT_SOCKET", "/tmp/x.sock")
    assert moat.Client().socket_path == "/tmp/x.sock"
    assert moat.Client("/a.sock").socket_path == "/a.sock"


def test_server_closing_mid_response_is_unavailable(tmp_path):
    # A listener that accepts and hangs up: not moatd, just a broken peer.
    path = str(tmp_path / "hangup.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def hang_up():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()

    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    try:
        with pytest.raises(moat.Unavailable):
            moat.health(socket=path)
    finally:
        t.join(5)
        server.close()


def test_query_building():
    assert build_path("/v1/sandboxes", {"tag": ["a=1", "b=x y"], "state": None}) == \
        "/v1/sandboxes?tag=a=1&tag=b=x%20y"
    assert build_path("/p", {}) == "/p"


def test_ids_cannot_change_the_route():
    with pytest.raises(moat.InvalidArgument):
        moat.Sandbox.from_id("../health", socket="/nonexistent")
