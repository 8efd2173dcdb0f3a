"""The SDK's network surface against a real moatd: policies at create and
live, tunnels to exposed ports, metrics. Destinations are a server in a
network namespace these tests create (tests/e2e/netfixture.py); names
resolve through a zone the test serves (tests/e2e/dnszone.py)."""

import re
import socket
import subprocess
import time

import pytest

import moat


def _moatd_has_networking():
    import moatd_harness
    try:
        done = subprocess.run([moatd_harness.moatd_binary(), "--help"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--net-prefix" in done.stdout + done.stderr


needs_networking = pytest.mark.skipif(not _moatd_has_networking(),
                                reason="this moatd has no networking (--net-prefix missing from --help)")

PYTHON = "/usr/bin/python3"
CONNECT = r'''
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    print(s.makefile("rb").read().partition(b"\r\n\r\n")[2].decode().strip())
except OSError as e:
    print("FAIL", type(e).__name__)
'''


@pytest.fixture(scope="module")
def net():
    from netfixture import NetFixture
    fixture = NetFixture()
    try:
        fixture.setup()
        yield fixture
    finally:
        fixture.teardown()


@pytest.fixture(scope="module")
def moatd(request, net):
    import moatd_harness
    from dnszone import DnsZoneServer
    zone = DnsZoneServer(net.subnet).start()
    try:
        yield from moatd_harness.moatd_fixture(request, "sdk-network",
                                               extra_args=["--dns-upstream", zone.address])
    finally:
        zone.stop()


def fetch(sb, address, port=8000):
    return sb.run([PYTHON, "-c", CONNECT, address, str(port)], timeout=30).stdout.strip()


def test_policy_objects_serialize():
    assert moat.Network.none().to_json() == {"mode": "none"}
    assert moat.Network.internet().to_json() == {"mode": "internet"}
    assert moat.Network.allow(["pypi.org", "10.0.0.0/8"], bandwidth_mbps=10, max_connections=64).to_json() == {
        "mode": "allow", "allow": ["pypi.org", "10.0.0.0/8"], "bandwidth_mbps": 10, "max_connections": 64}
    with pytest.raises(moat.InvalidArgument):
        moat.Network("foo")
    with pytest.raises(moat.InvalidArgument):
        moat.Port("8080")


@needs_networking
def test_allow_tunnels_set_network_metrics(sock, net):
    policy = moat.Network.allow([net.server_v4 + "/32", "good.test"])
    with moat.Sandbox.create(network=policy, ports=[8080, moat.Port(8081, public=True)]) as sb:
        assert sb.network.mode == "allow"
        assert net.server_v4 + "/32" in sb.network.allow_list or net.server_v4 in sb.network.allow_list
        assert fetch(sb, net.server_v4) == "fixture " + net.server_v4
        # good.test has A and AAAA records; either may be tried first.
        assert fetch(sb, "good.test") in ("fixture " + net.server_v4, "fixture " + net.server_v6_public)
        assert fetch(sb, net.server_v4_other).startswith("FAIL")

        tunnels = sb.tunnels()
        assert set(tunnels) == {8080, 8081}
        assert isinstance(tunnels[8080], moat.Tunnel)
        assert re.fullmatch(r"[0-9a-f]{64}", tunnels[8080].token)
        assert tunnels[8081].public and not tunnels[8080].public
        assert tunnels[8080].token not in repr(tunnels[8080])
        server = sb.exec(PYTHON, "-m", "http.server", "8080", "--bind", "127.0.0.1", "--directory", "/",
                         stdin=False)
        try:
            deadline = time.monotonic() + 15
            while True:
                status = _get_status(tunnels[8080], tunnels[8080].headers)
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert status == 200
            assert _get_status(tunnels[8080], {}) == 401
        finally:
            server.kill()
            server.wait(timeout=30)

        before = sb.metrics()
        assert before["net_tx_bytes"] > 0 and before["tunnel_rx_bytes"] > 0, before
        sb.set_network(moat.Network.none())
        assert sb.network.mode == "none"
        assert fetch(sb, net.server_v4).startswith("FAIL")
        sb.set_network("internet")
        assert fetch(sb, net.server_v4_other) == "fixture " + net.server_v4_other
        assert sb.metrics()["net_tx_bytes"] > before["net_tx_bytes"]
    with moat.Sandbox.create("true") as stopped:
        stopped.wait(timeout=30)
        with pytest.raises(moat.SandboxNotRunning):
            stopped.set_network(moat.Network.none())


@needs_networking
def test_bad_policy_raises_invalid_argument(sock):
    with pytest.raises(moat.InvalidArgument):
        moat.Sandbox.create(network=moat.Network.allow(["300.1.1.1/8"]))
    with pytest.raises(moat.InvalidArgument):
        moat.Sandbox.create(ports=[8080, 8080])


def _get_status(tunnel, headers):
    try:
        with socket.create_connection(("127.0.0.1", tunnel.host_port), timeout=5) as s:
            lines = ["GET / HTTP/1.0", "Host: x"] + ["%s: %s" % kv for kv in headers.items()]
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            head = s.makefile("rb").readline()
    except OSError:
        return None
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(match.group(1)) if match else None
