"""Sandbox networking end to end: egress modes enforced on the host, the
DNS allowlist, the always-blocked destinations, live policy changes, exposed
ports (HTTP and WebSocket, with and without token), byte counters and
teardown, including after moatd is SIGKILLed.

Every destination is a server these tests start themselves: in a network
namespace of their own (netfixture.py, 198.18.n.0/24 and fd00:198:n::/64,
plus the metadata addresses), on the host, or in another sandbox. Names
resolve through a DNS zone served by the test (dnszone.py), which moatd is
told to use as its upstream. No packet is sent to any outside address.
"""

import base64
import hashlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import threading
import time

import pytest

import moat
import moatd_harness
from dnszone import DnsZoneServer
from netfixture import SERVER_PORT, NetFixture, http_get

# The floor moatd puts under a DNS record's TTL before an admitted address
# expires (the zone's records have TTL 1).
MOAT_DNS_TTL_MIN = 2
PYTHON = "/usr/bin/python3"
CONNECT_TIMEOUT = 1.5
# glibc's resolver: one quick try, so a silently dropped query fails fast.
RESOLVER_ENV = {"RES_OPTIONS": "timeout:2 attempts:1"}


def _moatd_has_networking():
    try:
        done = subprocess.run([moatd_harness.moatd_binary(), "--help"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--net-prefix" in done.stdout + done.stderr


pytestmark = pytest.mark.skipif(not _moatd_has_networking(),
                                reason="this moatd has no networking (--net-prefix missing from --help)")


# --- fixtures -------------------------------------------------------------------

@pytest.fixture(scope="module")
def net():
    fixture = NetFixture()
    try:
        fixture.setup()
        yield fixture
    finally:
        fixture.teardown()


@pytest.fixture(scope="module")
def zone(net):
    server = DnsZoneServer(net.subnet).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moatd(request, net, zone):
    yield from moatd_harness.moatd_fixture(request, "network",
                                           extra_args=["--dns-upstream", zone.address])


@pytest.fixture
def make(moatd):
    """make(network=..., ports=...) -> a sandbox deleted after the test."""
    yield from moatd_harness.sandbox_maker(moatd)


# --- probes run inside a sandbox ------------------------------------------------

# argv: JSON [[key, host, port, family "4"|"6"|""], ...], timeout. Connects to
# each target in parallel (resolving names through the sandbox's resolver),
# sends an HTTP GET; prints {key: "OK <address> <body>" | "FAIL <why>"}.
_PROBE = r'''
import errno, json, socket, sys, threading
targets, timeout = json.loads(sys.argv[1]), float(sys.argv[2])
results = {}
def one(key, host, port, family):
    fam = {"4": socket.AF_INET, "6": socket.AF_INET6}.get(family, socket.AF_UNSPEC)
    try:
        infos = socket.getaddrinfo(host, port, fam, socket.SOCK_STREAM)
    except socket.gaierror as e:
        results[key] = "FAIL resolve %s" % e
        return
    errors = []
    for af, kind, proto, _, address in infos:
        s = socket.socket(af, kind, proto)
        s.settimeout(timeout)
        try:
            s.connect(address)
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            results[key] = "OK %s %s" % (address[0], data.partition(b"\r\n\r\n")[2].decode().strip())
            return
        except OSError as e:
            errors.append("%s:%s" % (address[0], type(e).__name__ if e.errno is None else errno.errorcode.get(e.errno, e.errno)))
        finally:
            s.close()
    results[key] = "FAIL connect " + " ".join(errors)
threads = [threading.Thread(target=one, args=t) for t in targets]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
'''

_RESOLVE = r'''
import json, socket, sys
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = sorted({i[4][0] for i in socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM)})
    except socket.gaierror as e:
        out[name] = "FAIL %s" % e
print(json.dumps(out))
'''

# The sandbox's own source address toward a destination (a UDP connect sends nothing).
_OWN_ADDRESS = r'''
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
try:
    s.connect((sys.argv[1], 9))
    print(s.getsockname()[0])
except OSError as e:
    print("FAIL", e)
'''


def py(sb, script, *args, timeout=60):
    result = sb.run([PYTHON, "-c", script] + [str(a) for a in args], timeout=timeout, env=RESOLVER_ENV)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def reach(sb, *targets, port=SERVER_PORT, timeout=CONNECT_TIMEOUT):
    """{target: "OK ..." | "FAIL ..."}; a target is an address or name, or
    (key, host, port, family)."""
    rows = []
    for t in targets:
        if isinstance(t, str):
            rows.append([t, t, port, ""])
        else:
            rows.append(list(t))
    started = time.monotonic()
    out = json.loads(py(sb, _PROBE, json.dumps(rows), timeout))
    # Probes run in parallel: a blocked one ends by its connect timeout, so the
    # whole batch must too (a hang would be a bug of its own).
    assert time.monotonic() - started < timeout + 20
    return out


def resolve(sb, *names):
    return json.loads(py(sb, _RESOLVE, *names))


def ok(result, address=None):
    if not result.startswith("OK "):
        return False
    if address is not None:
        # The fixture server names the address it was reached on.
        return result.endswith("fixture %s" % address)
    return True


def own_address(sb, toward):
    out = py(sb, _OWN_ADDRESS, toward).strip()
    assert not out.startswith("FAIL"), out
    return out


def link_addresses(link):
    done = subprocess.run(["ip", "-j", "addr", "show", "dev", link], capture_output=True, text=True,
                          timeout=10)
    if done.returncode != 0:
        return []
    found = []
    for entry in json.loads(done.stdout or "[]"):
        for info in entry.get("addr_info", []):
            if info.get("scope") == "global":
                found.append(info["local"])
    return found


def wait_for(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.1)


class HostListener:
    """TCP listeners on the host, on 0.0.0.0:P and [::]:P (every host
    address, loopback and veth sides included), counting connections."""

    def __init__(self):
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.v4.bind(("0.0.0.0", 0))
        self.port = self.v4.getsockname()[1]
        self.v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.v6.bind(("::", self.port))
        self.accepted = []
        self._stop = False
        self._threads = []
        for s in (self.v4, self.v6):
            s.listen(16)
            s.settimeout(0.2)
            t = threading.Thread(target=self._accept, args=(s,), daemon=True)
            t.start()
            self._threads.append(t)

    def _accept(self, s):
        while not self._stop:
            try:
                conn, peer = s.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(peer[0])
            try:
                conn.settimeout(2)
                conn.recv(4096)  # the request: closing with it unread would reset the reply
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhost service\n")
            except OSError:
                pass
            finally:
                conn.close()

    def close(self):
        self._stop = True
        for t in self._threads:
            t.join(timeout=2)
        self.v4.close()
        self.v6.close()


def allow_server(net, *extra):
    return moat.Network.allow([net.server_v4 + "/32"] + list(extra))


# --- modes ----------------------------------------------------------------------

def test_none_mode_reaches_nothing_but_its_own_loopback(moatd, net, zone, make):
    before = len(net.requests())
    for sb in (make(), make(network=moat.Network.none())):
        assert sb.network.mode == "none"
        assert sb.info.get("tunnels") in (None, [])
        got = reach(sb, net.server_v4, net.server_v4_other, net.server_v6, net.server_v6_public, net.host_v4,
                    net.METADATA_V4, "good.test")
        assert not any(ok(r) for r in got.values()), got
        assert resolve(sb, "good.test")["good.test"].startswith("FAIL")
        # Loopback only: no interface but lo, and loopback works.
        interfaces = py(sb, "print(' '.join(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))")
        assert interfaces.split() == ["lo"]
        out = py(sb, r'''
import socket, threading
for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind((address, 9000))
    server.listen(1)
    threading.Thread(target=lambda: server.accept()[0].sendall(b"hi"), daemon=True).start()
    c = socket.create_connection((address, 9000), timeout=2)
    print(c.recv(2).decode())
''')
        assert out.split() == ["hi", "hi"]
    assert len(net.requests()) == before, "the fixture server saw a request from a none sandbox"
    assert zone.count("good.test") == 0


def test_allow_cidr_reaches_exactly_that_cidr(moatd, net, make):
    sb = make(network=allow_server(net))
    assert sb.network.mode == "allow"
    got = reach(sb, net.server_v4, net.server_v4_other, net.server_v6, net.server_v6_public, net.host_v4)
    assert ok(got[net.server_v4], net.server_v4), got
    # Same server, same netns, a second address: not in the /32.
    assert not ok(got[net.server_v4_other]), got
    # Same server over IPv6: no bypass through v6.
    assert not ok(got[net.server_v6]), got
    assert not ok(got[net.server_v6_public]), got
    assert not ok(got[net.host_v4]), got


def test_allow_ipv6_cidr_reaches_only_v6(moatd, net, make):
    sb = make(network=moat.Network.allow([net.server_v6 + "/128"]))
    got = reach(sb, net.server_v6, net.server_v6_public, net.server_v4, net.METADATA_V6)
    assert ok(got[net.server_v6], net.server_v6), got
    assert not ok(got[net.server_v6_public]), got
    assert not ok(got[net.server_v4]), got
    assert not ok(got[net.METADATA_V6]), got


def test_allow_domain_admits_only_its_answers(moatd, net, zone, make):
    sb = make(network=moat.Network.allow(["good.test", "alias.test"]))
    # /etc/resolv.conf points at moatd's resolver inside the sandbox.
    resolv = sb.run(["cat", "/etc/resolv.conf"]).stdout
    assert re.search(r"^nameserver 127\.0\.0\.53$", resolv, re.M), resolv
    names = resolve(sb, "good.test")
    assert names["good.test"] == sorted([net.server_v4, net.server_v6_public]), names
    assert zone.count("good.test") >= 1
    got = reach(sb, ("v4", "good.test", SERVER_PORT, "4"), ("v6", "good.test", SERVER_PORT, "6"),
                net.server_v4_other)
    assert ok(got["v4"], net.server_v4), got
    assert ok(got["v6"], net.server_v6_public), got
    # The same server through an address no allowed name resolved to.
    assert not ok(got[net.server_v4_other]), got

    # A name not on the list: refused by moatd, never asked upstream.
    evil_before = zone.count("evil.test")
    names = resolve(sb, "evil.test", "nothere.test")
    assert names["evil.test"].startswith("FAIL"), names
    assert names["nothere.test"].startswith("FAIL"), names
    assert zone.count("evil.test") == evil_before == 0
    assert zone.count("nothere.test") == 0

    # An allowed name that is a CNAME to a disallowed one: whatever moatd
    # answers, the disallowed name's address must not become reachable.
    # (Whether moatd answers NXDOMAIN, an empty answer or the CNAME alone is its choice.)
    got = reach(sb, "alias.test")
    assert not ok(got["alias.test"]), got
    got = reach(sb, net.server_v4_other)
    assert not ok(got[net.server_v4_other]), got


def test_dns_answer_in_a_private_range_needs_a_cidr(moatd, net, make):
    """DNS rebinding: lan.test (allowed) resolves to a ULA; moatd answers but
    the address opens only if a CIDR of the policy covers it."""
    sb = make(network=moat.Network.allow(["lan.test"]))
    assert resolve(sb, "lan.test")["lan.test"] == [net.server_v6]
    got = reach(sb, ("lan", "lan.test", SERVER_PORT, "6"))
    assert not ok(got["lan"]), got
    sb.set_network(moat.Network.allow(["lan.test", net.server_v6 + "/64"]))
    got = reach(sb, ("lan", "lan.test", SERVER_PORT, "6"))
    assert ok(got["lan"], net.server_v6), got


def test_admitted_address_expires_with_its_ttl(moatd, net, make):
    sb = make(network=moat.Network.allow(["good.test"]))
    got = reach(sb, ("name", "good.test", SERVER_PORT, "4"))
    assert ok(got["name"], net.server_v4), got
    # The record's TTL is 1 s, raised to MOAT_DNS_TTL_MIN; after it a new
    # connection to the once-resolved address (no new lookup) is dropped.
    time.sleep(MOAT_DNS_TTL_MIN + 2.5)
    got = reach(sb, net.server_v4, net.server_v6_public)
    assert not ok(got[net.server_v4]), got
    assert not ok(got[net.server_v6_public]), got
    # Resolving again admits it again.
    got = reach(sb, ("name", "good.test", SERVER_PORT, "4"))
    assert ok(got["name"], net.server_v4), got


def test_wildcard_allows_names_below_not_the_name_itself(moatd, net, zone, make):
    """What this asserts: "*.example.test" allows every name strictly below
    example.test (any depth) and not example.test itself, which moatd refuses
    without asking upstream (the zone does have an A record for it)."""
    sb = make(network=moat.Network.allow(["*.example.test"]))
    names = resolve(sb, "a.example.test", "b.c.example.test", "example.test", "good.test")
    assert names["a.example.test"] == [net.server_v4], names
    assert names["b.c.example.test"] == [net.server_v4], names
    assert names["example.test"].startswith("FAIL"), names
    assert names["good.test"].startswith("FAIL"), names
    assert zone.count("example.test") == 0
    got = reach(sb, ("a", "a.example.test", SERVER_PORT, "4"))
    assert ok(got["a"], net.server_v4), got


def test_internet_mode_reaches_public_addresses_not_private_ones(moatd, net, make):
    sb = make(network=moat.Network.internet())
    assert sb.network.mode == "internet"
    got = reach(sb, net.server_v4, net.server_v4_other, net.server_v6, net.server_v6_public,
                net.METADATA_V4, net.METADATA_V6)
    # 198.18.0.0/15 and 2001:db8::/32 are not private ranges: reachable.
    assert ok(got[net.server_v4], net.server_v4), got
    assert ok(got[net.server_v4_other], net.server_v4_other), got
    assert ok(got[net.server_v6_public], net.server_v6_public), got
    # fd00:198:n::2 is a ULA (fc00::/7): private, blocked unless allowed.
    assert not ok(got[net.server_v6]), got
    assert not ok(got[net.METADATA_V4]), got
    assert not ok(got[net.METADATA_V6]), got
    opened = make(network=moat.Network.internet(allow=[net.server_v6 + "/128"]))
    got = reach(opened, net.server_v6)
    assert ok(got[net.server_v6], net.server_v6), got


def test_metadata_addresses_blocked_even_when_allowed(moatd, net, make):
    # The fixture netns really serves on both addresses (setup checked it
    # from the host), so a failure here is moat's block.
    assert http_get(net.METADATA_V4, SERVER_PORT).strip() == "fixture " + net.METADATA_V4
    sb = make(network=moat.Network.allow([net.METADATA_V4 + "/32", "169.254.0.0/16",
                                          net.METADATA_V6 + "/128", net.server_v4 + "/32"]))
    got = reach(sb, net.METADATA_V4, net.METADATA_V6, net.server_v4)
    assert ok(got[net.server_v4], net.server_v4), got
    assert not ok(got[net.METADATA_V4]), got
    assert not ok(got[net.METADATA_V6]), got


def test_host_services_unreachable(moatd, net, make):
    listener = HostListener()
    try:
        allowed = make(network=allow_server(net, net.host_v4 + "/32", net.host_v6 + "/128"))
        internet = make(network=moat.Network.internet())
        host_addresses = {"127.0.0.1", "::1", net.host_v4, net.host_v6}
        for link in moatd.net_links():
            host_addresses.update(link_addresses(link))  # the sandboxes' gateways
        for link in ("eth0",):
            host_addresses.update(link_addresses(link))
        assert len(host_addresses) > 4, host_addresses
        # They are real services: the host itself reaches each.
        for address in host_addresses:
            assert http_get(address, listener.port).strip() == "host service", address
        seen = len(listener.accepted)
        for sb in (allowed, internet):
            got = reach(sb, *sorted(host_addresses), port=listener.port)
            assert not any(ok(r) for r in got.values()), got
        assert len(listener.accepted) == seen, listener.accepted[seen:]
    finally:
        listener.close()


def test_sandboxes_cannot_reach_each_other(moatd, net, make):
    a = make(network=allow_server(net, net.server_v6 + "/128"))
    a_v4 = own_address(a, net.server_v4)
    a_v6 = own_address(a, net.server_v6)
    assert ipaddress.ip_address(a_v4) in ipaddress.ip_network(moatd.net_pool4), a_v4
    server = a.exec(PYTHON, "-c", r'''
import http.server, socket
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"sandbox a")
S(("::", 8080), H).serve_forever()
''', stdin=False)
    try:
        # A reaches its own server on its eth0 addresses: it is listening.
        got = wait_for(lambda: (lambda g: g if ok(g[a_v4]) else None)(reach(a, a_v4, port=8080)),
                       what="sandbox A's server")
        assert ok(got[a_v4]) and got[a_v4].endswith("sandbox a"), got
        # B, even with A's whole pool on its allow list, and C in internet mode: blocked.
        b = make(network=moat.Network.allow([moatd.net_pool4, moatd.net_pool6, net.server_v4 + "/32"]))
        c = make(network=moat.Network.internet())
        for sb in (b, c):
            got = reach(sb, a_v4, a_v6, port=8080)
            assert not ok(got[a_v4]) and not ok(got[a_v6]), got
    finally:
        server.kill()
        server.wait(timeout=30)


def test_live_policy_change_applies_to_new_connections(moatd, net, make):
    sb = make(network=moat.Network.none())
    assert not ok(reach(sb, net.server_v4)[net.server_v4])
    sb.set_network(allow_server(net))
    assert sb.network.mode == "allow"
    assert sb.refresh().network.mode == "allow"
    got = reach(sb, net.server_v4, net.server_v4_other)
    assert ok(got[net.server_v4], net.server_v4), got
    assert not ok(got[net.server_v4_other]), got
    sb.set_network(moat.Network.allow([net.server_v4_other + "/32"]))
    got = reach(sb, net.server_v4, net.server_v4_other)
    assert not ok(got[net.server_v4]), got
    assert ok(got[net.server_v4_other], net.server_v4_other), got
    sb.set_network("internet")
    assert ok(reach(sb, net.server_v4)[net.server_v4])
    sb.set_network(moat.Network.none())
    assert sb.network.mode == "none"
    got = reach(sb, net.server_v4, net.server_v4_other)
    assert not any(ok(r) for r in got.values()), got


def test_policy_change_of_a_stopped_sandbox_is_409(moatd, net):
    sb = moat.Sandbox.create("true", socket=moatd.socket)
    try:
        sb.wait(timeout=30)
        with pytest.raises(moat.SandboxNotRunning):
            sb.set_network(allow_server(net))
    finally:
        sb.terminate()


# --- exposed ports ------------------------------------------------------------

def tunnel_request(tunnel, path="/", headers=None, timeout=5.0):
    """(status, body) of a GET through a tunnel URL."""
    match = re.match(r"http://([^/:]+|\[[^\]]+\]):(\d+)$", tunnel.url)
    assert match, tunnel.url
    host, port = match.group(1).strip("[]"), int(match.group(2))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        lines = ["GET %s HTTP/1.1" % path, "Host: sandbox", "Connection: close"]
        lines += ["%s: %s" % kv for kv in (headers or {}).items()]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return (int(status.group(1)) if status else None), body


_HTTP_SERVER = r'''
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("port %s path %s token-header %s" % (sys.argv[1], self.path.split("?")[0],
                self.headers.get("X-Moat-Token") is not None)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def start_http(sb, port):
    return sb.exec(PYTHON, "-c", _HTTP_SERVER, str(port), stdin=False)


def test_exposed_ports_need_the_token_unless_public(moatd, make):
    sb = make(ports=[8080, moat.Port(8081, public=True)])
    assert sb.network.mode == "none"
    tunnels = sb.tunnels()
    assert sorted(tunnels) == [8080, 8081]
    private, public = tunnels[8080], tunnels[8081]
    assert re.fullmatch(r"[0-9a-f]{64}", private.token or ""), private
    assert not private.public and public.public
    assert private.url == "http://127.0.0.1:%d" % private.host_port
    assert public.url == "http://127.0.0.1:%d" % public.host_port
    assert private.host_port != public.host_port
    servers = [start_http(sb, 8080), start_http(sb, 8081)]
    try:
        for tunnel in (private, public):
            wait_for(lambda: tunnel_request(tunnel, headers=tunnel.headers)[0] == 200,
                     what="the in-sandbox server behind tunnel %d" % tunnel.port)
        status, body = tunnel_request(private, "/x", headers={"X-Moat-Token": private.token})
        assert status == 200 and body.startswith(b"port 8080 path /x"), (status, body)
        status, body = tunnel_request(private, "/q?moat_token=" + private.token)
        assert status == 200 and body.startswith(b"port 8080 path /q"), (status, body)
        for headers, path in (({}, "/"), ({"X-Moat-Token": "0" * 64}, "/"),
                              ({}, "/?moat_token=" + "0" * 64), ({"X-Moat-Token": private.token[:-1]}, "/")):
            status, body = tunnel_request(private, path, headers=headers)
            assert status == 401, (headers, path, status, body)
            assert b"port 8080" not in body
        # The public port answers without a token.
        status, body = tunnel_request(public, "/open")
        assert status == 200 and body.startswith(b"port 8081 path /open"), (status, body)
    finally:
        for p in servers:
            p.kill()
            p.wait(timeout=30)


_WS_ECHO = r'''
import base64, hashlib, socket, struct, sys
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(4)
def read_exact(c, n):
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data
while True:
    c, _ = server.accept()
    try:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.recv(4096)
            if not chunk:
                raise EOFError
            head += chunk
        key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
        accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while True:
            b0, b1 = read_exact(c, 2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", read_exact(c, 2))[0]
            elif length == 127:
                length = struct.unpack("!Q", read_exact(c, 8))[0]
            mask = read_exact(c, 4) if b1 & 0x80 else b"\0\0\0\0"
            payload = bytes(x ^ mask[i % 4] for i, x in enumerate(read_exact(c, length)))
            if b0 & 0x0F == 8:
                c.sendall(bytes([0x88, 0]))
                break
            reply = b"echo:" + payload
            c.sendall(bytes([0x80 | (b0 & 0x0F), len(reply)]) + reply)
    except (EOFError, OSError, IndexError):
        pass
    finally:
        c.close()
'''


def ws_frame(opcode, payload, mask=b"\x12\x34\x56\x78"):
    masked = bytes(x ^ mask[i % 4] for i, x in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def test_websocket_through_a_tunnel(moatd, make):
    sb = make(ports=[8082])
    tunnel = sb.tunnels()[8082]
    server = sb.exec(PYTHON, "-c", _WS_ECHO, "8082", stdin=False)
    try:
        key = base64.b64encode(os.urandom(16))
        expected_accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())

        def handshake(token):
            s = socket.create_connection(("127.0.0.1", tunnel.host_port), timeout=5)
            request = (b"GET /chat HTTP/1.1\r\nHost: sandbox\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n")
            if token:
                request += b"X-Moat-Token: " + token.encode() + b"\r\n"
            s.sendall(request + b"\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(1)
                if not chunk:
                    break
                head += chunk
            return s, head

        def upgraded():
            s, head = handshake(tunnel.token)
            if head.startswith(b"HTTP/1.1 101"):
                return s, head
            s.close()
            return None
        s, head = wait_for(upgraded, what="the WebSocket echo server")
        try:
            headers = dict((k.strip().lower(), v.strip()) for k, _, v in
                           (line.partition(b":") for line in head.split(b"\r\n")[1:] if line))
            assert headers.get(b"sec-websocket-accept") == expected_accept, head
            assert headers.get(b"upgrade", b"").lower() == b"websocket", head
            s.sendall(ws_frame(0x1, b"hello moat"))
            b0, b1 = s.recv(2, socket.MSG_WAITALL)
            assert b0 == 0x81 and not b1 & 0x80, (b0, b1)  # final text frame, unmasked from server
            payload = s.recv(b1 & 0x7F, socket.MSG_WAITALL)
            assert payload == b"echo:hello moat"
            s.sendall(ws_frame(0x8, b""))
            assert s.recv(2, socket.MSG_WAITALL)[0] == 0x88
        finally:
            s.close()
        # Without the token the upgrade is refused.
        s, head = handshake(None)
        s.close()
        assert head.startswith(b"HTTP/1.1 401") or head.startswith(b"HTTP/1.0 401"), head
    finally:
        server.kill()
        server.wait(timeout=30)


# --- metrics, limits, teardown ------------------------------------------------

def test_metrics_count_sandbox_and_tunnel_bytes(moatd, net, make):
    sb = make(network=allow_server(net), ports=[8083])
    before = sb.metrics()
    for key in ("cpu_seconds", "memory_bytes", "memory_peak_bytes", "pids", "net_rx_bytes",
                "net_tx_bytes", "tunnel_rx_bytes", "tunnel_tx_bytes"):
        assert isinstance(before[key], (int, float)) and before[key] >= 0, (key, before)
    upload = 1 << 20
    out = py(sb, r'''
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
n = int(sys.argv[3])
s.sendall(b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % n + b"x" * n)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.partition(b"\r\n\r\n")[2].decode().strip())
''', net.server_v4, SERVER_PORT, upload)
    assert out.strip() == "received %d" % upload
    after = sb.metrics()
    assert after["net_tx_bytes"] - before["net_tx_bytes"] >= upload, (before, after)
    assert after["net_rx_bytes"] > before["net_rx_bytes"], (before, after)
    # Tunnel traffic is counted on its own.
    tunnel = sb.tunnels()[8083]
    server = start_http(sb, 8083)
    try:
        wait_for(lambda: tunnel_request(tunnel, headers=tunnel.headers)[0] == 200, what="tunnel server")
        status, _ = tunnel_request(tunnel, "/" + "p" * 2000, headers=tunnel.headers)
        assert status == 200
        final = sb.metrics()
        assert final["tunnel_rx_bytes"] - after["tunnel_rx_bytes"] >= 2000, (after, final)
        assert final["tunnel_tx_bytes"] > after["tunnel_tx_bytes"], (after, final)
    finally:
        server.kill()
        server.wait(timeout=30)


_HOLD_CONNECTIONS = r'''
import socket, sys, time
address, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, results = [], []
for _ in range(count):
    try:
        held.append(socket.create_connection((address, port), timeout=1.5))
        results.append("ok")
    except OSError as e:
        results.append("fail")
for s in held:
    s.close()
time.sleep(0.5)
try:
    socket.create_connection((address, port), timeout=1.5).close()
    results.append("ok")
except OSError:
    results.append("fail")
print(" ".join(results))
'''

_UPLOAD = r'''
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
n = int(sys.argv[3])
start = time.monotonic()
s.sendall(b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % n + b"x" * n)
reply = s.makefile("rb").read().partition(b"\r\n\r\n")[2].decode().strip()
print("%.3f %s" % (time.monotonic() - start, reply))
'''


def test_max_connections_limits_concurrent_outbound_connections(moatd, net, make):
    sb = make(network=moat.Network.allow([net.server_v4 + "/32"], max_connections=4))
    assert sb.network.max_connections == 4
    # 6 held at once: 4 pass, 2 refused; once they close, a new one passes.
    out = py(sb, _HOLD_CONNECTIONS, net.server_v4, SERVER_PORT, 6).split()
    assert out == ["ok"] * 4 + ["fail"] * 2 + ["ok"], out


def test_bandwidth_limit_slows_uploads(moatd, net, make):
    size = 4 << 20
    limited = make(network=moat.Network.allow([net.server_v4 + "/32"], bandwidth_mbps=10))
    assert limited.network.bandwidth_mbps == 10
    free = make(network=moat.Network.allow([net.server_v4 + "/32"]))
    seconds, reply = py(free, _UPLOAD, net.server_v4, SERVER_PORT, size).strip().split(" ", 1)
    assert reply == "received %d" % size
    unlimited = float(seconds)
    seconds, reply = py(limited, _UPLOAD, net.server_v4, SERVER_PORT, size, timeout=120).strip().split(" ", 1)
    assert reply == "received %d" % size
    # 4 MiB at 10 Mbit/s is 3.4 s; allow a generous burst.
    assert float(seconds) >= 2.0, (seconds, unlimited)
    assert float(seconds) > 3 * unlimited, (seconds, unlimited)


def test_deleting_sandboxes_removes_their_links_and_elements(moatd, net, make):
    wait_for(lambda: not moatd.net_links(), what="earlier tests' veths to go")
    a = make(network=allow_server(net))
    b = make(network=moat.Network.internet())
    none = make()
    assert len(moatd.net_links()) == 2, moatd.net_links()  # none mode gets no veth
    assert ok(reach(a, net.server_v4)[net.server_v4])
    assert moatd.nft_sandbox_elements(), "no per-sandbox element in inet %s" % moatd.net_prefix
    for sb in (a, b, none):
        sb.terminate()
    wait_for(lambda: not moatd.net_links(), what="veths to go")
    assert moatd.nft_sandbox_elements() == []


def test_sigkill_then_restart_leaves_no_network_state(moatd, net):
    sandboxes = [moat.Sandbox.create(socket=moatd.socket, network=allow_server(net), ports=[8080]),
                 moat.Sandbox.create(socket=moatd.socket, network=moat.Network.allow(["good.test"])),
                 moat.Sandbox.create(socket=moatd.socket, network=moat.Network.internet())]
    assert ok(reach(sandboxes[1], ("n", "good.test", SERVER_PORT, "4"))["n"])
    assert len(moatd.net_links()) == 3
    tunnel_port = sandboxes[0].tunnels()[8080].host_port
    moatd.proc.kill()
    moatd.proc.wait()
    moatd.restart()
    wait_for(lambda: not moatd.net_links(), what="the restarted moatd to remove the old veths")
    assert moatd.nft_sandbox_elements() == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", tunnel_port), timeout=2).close()
    for sb in sandboxes:
        sb.terminate()
    # The restarted daemon's networking works.
    fresh = moat.Sandbox.create(socket=moatd.socket, network=allow_server(net))
    try:
        assert ok(reach(fresh, net.server_v4)[net.server_v4], net.server_v4)
    finally:
        fresh.terminate()
    wait_for(lambda: not moatd.net_links(), what="the fresh sandbox's veth to go")
    moatd.fd_baseline = moatd.settled_fd_count()
    moatd.net_fd_baseline = len(moatd.netns_fds())


# --- bad input ------------------------------------------------------------------

def _bad_bodies():
    too_many = ["10.%d.%d.0/24" % (i // 256, i % 256) for i in range(257)]
    return [
        ("mode-foo", {"network": {"mode": "foo"}}),
        ("mode-string-foo", {"network": "foo"}),
        ("mode-missing", {"network": {"allow": ["10.0.0.0/8"]}}),
        ("network-number", {"network": 5}),
        ("allow-not-list", {"network": {"mode": "allow", "allow": "good.test"}}),
        ("allow-300", {"network": {"mode": "allow", "allow": ["300.1.1.1/8"]}}),
        ("allow-prefix-33", {"network": {"mode": "allow", "allow": ["10.0.0.0/33"]}}),
        ("allow-v6-prefix-129", {"network": {"mode": "allow", "allow": ["2001:db8::/129"]}}),
        ("allow-star", {"network": {"mode": "allow", "allow": ["*"]}}),
        ("allow-double-dot", {"network": {"mode": "allow", "allow": ["a..b"]}}),
        ("allow-empty", {"network": {"mode": "allow", "allow": [""]}}),
        ("allow-number", {"network": {"mode": "allow", "allow": [5]}}),
        ("allow-inner-star", {"network": {"mode": "allow", "allow": ["a.*.com"]}}),
        ("allow-long-name", {"network": {"mode": "allow", "allow": ["a" * 64 + ".com"]}}),
        ("allow-too-many", {"network": {"mode": "allow", "allow": too_many}}),
        ("bandwidth-negative", {"network": {"mode": "internet", "bandwidth_mbps": -1}}),
        ("bandwidth-string", {"network": {"mode": "internet", "bandwidth_mbps": "1"}}),
        ("connections-negative", {"network": {"mode": "internet", "max_connections": -1}}),
        ("unknown-member", {"network": {"mode": "none", "alow": []}}),
        ("port-0", {"ports": [0]}),
        ("port-70000", {"ports": [70000]}),
        ("port-negative", {"ports": [-1]}),
        ("port-string", {"ports": ["8080"]}),
        ("port-duplicate", {"ports": [8080, {"port": 8080, "public": True}]}),
        ("port-17", {"ports": list(range(9000, 9017))}),
        ("port-public-string", {"ports": [{"port": 8080, "public": "yes"}]}),
        ("ports-not-list", {"ports": 8080}),
    ]


@pytest.mark.parametrize("body", [b for _, b in _bad_bodies()], ids=[i for i, _ in _bad_bodies()])
def test_bad_network_bodies_are_400(moatd, body):
    before = len(moatd.client().request("GET", "/v1/sandboxes")["sandboxes"])
    status, headers, data = moatd.raw(moatd_harness.http_request("POST", "/v1/sandboxes", json.dumps(body)))
    assert status == 400, (status, data[:300])
    error = json.loads(data)["error"]
    assert error["code"] == "invalid_argument" and error["message"], error
    assert len(moatd.client().request("GET", "/v1/sandboxes")["sandboxes"]) == before
    wait_for(lambda: not moatd.net_links(), what="no veth for a refused create")


def test_bad_live_policy_is_400_and_changes_nothing(moatd, net, make):
    sb = make(network=allow_server(net))
    for _, body in _bad_bodies():
        if "network" not in body:
            continue
        status, _, data = moatd.raw(moatd_harness.http_request(
            "PUT", "/v1/sandboxes/%s/network" % sb.id, json.dumps(body["network"])))
        assert status == 400, (body, status, data[:300])
        assert json.loads(data)["error"]["code"] == "invalid_argument"
    assert sb.refresh().network.mode == "allow"
    got = reach(sb, net.server_v4, net.server_v4_other)
    assert ok(got[net.server_v4]) and not ok(got[net.server_v4_other]), got
