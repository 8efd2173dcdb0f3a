"""A tiny authoritative DNS server for the network tests (standard library only).

It serves the zone ``test.`` on 127.0.0.1:<ephemeral UDP port>, the upstream
moatd is told to use (--dns-upstream), and counts the queries it receives
per name, so a test can prove that a name moatd must refuse never reached
upstream at all.

The zone, for fixture subnet n (see netfixture.py):

    good.test.          A     198.18.n.2      TTL 1
    good.test.          AAAA  2001:db8:198:n::2 TTL 1
    lan.test.           AAAA  fd00:198:n::2   TTL 1   (private: moatd admits it only under a CIDR)
    evil.test.          A     198.18.n.3      TTL 1
    alias.test.         CNAME evil.test.      TTL 1   (+ evil.test's A, as a real server adds)
    example.test.       A     198.18.n.2      TTL 1   (so refusing it is moat's doing)
    *.example.test.     A     198.18.n.2      TTL 1

Any other name in test. is NXDOMAIN; names outside test. are REFUSED.
"""

import ipaddress
import socket
import struct
import threading

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_AAAA = 1, 2, 5, 6, 28
CLASS_IN = 1
RCODE_OK, RCODE_FORMERR, RCODE_NXDOMAIN, RCODE_REFUSED = 0, 1, 3, 5


def encode_name(name):
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return bytes(out + b"\0")


def decode_name(packet, offset):
    """(name, offset after it); follows compression pointers with a hop limit."""
    labels, end, hops = [], None, 0
    while True:
        if offset >= len(packet):
            raise ValueError("name runs off the packet")
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(packet) or hops > 16:
                raise ValueError("bad compression pointer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | packet[offset + 1]
            hops += 1
            continue
        if length & 0xC0:
            raise ValueError("bad label type")
        offset += 1
        if length == 0:
            break
        labels.append(packet[offset:offset + length].decode("ascii", "replace"))
        offset += length
    return ".".join(labels).lower(), (end if end is not None else offset)


class Zone:
    """The records of the test zone for one fixture subnet."""

    def __init__(self, subnet, ttl=1):
        self.ttl = ttl
        v4 = lambda host: "198.18.%d.%d" % (subnet, host)
        self.records = {
            "good.test": [(TYPE_A, v4(2)), (TYPE_AAAA, "2001:db8:198:%x::2" % subnet)],
            "lan.test": [(TYPE_AAAA, "fd00:198:%x::2" % subnet)],
            "evil.test": [(TYPE_A, v4(3))],
            "alias.test": [(TYPE_CNAME, "evil.test")],
            "example.test": [(TYPE_A, v4(2))],
        }
        self.wildcards = {"example.test": [(TYPE_A, v4(2))]}

    def lookup(self, name):
        """[(type, value)] for name, or None if it does not exist."""
        if name in self.records:
            return self.records[name]
        parent = name.partition(".")[2]
        while parent:
            if parent in self.wildcards:
                return self.wildcards[parent]
            parent = parent.partition(".")[2]
        return None


def _rdata(rtype, value):
    if rtype == TYPE_A:
        return ipaddress.IPv4Address(value).packed
    if rtype == TYPE_AAAA:
        return ipaddress.IPv6Address(value).packed
    if rtype == TYPE_CNAME:
        return encode_name(value)
    raise ValueError(rtype)


def _record(name, rtype, ttl, rdata):
    return encode_name(name) + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata


def _soa(ttl):
    rdata = (encode_name("ns.test") + encode_name("hostmaster.test")
             + struct.pack("!IIIII", 1, 60, 60, 60, ttl))
    return _record("test", TYPE_SOA, ttl, rdata)


class DnsZoneServer:
    """Serve a Zone on 127.0.0.1 in a thread. start(), then stop()."""

    def __init__(self, subnet, ttl=1):
        self.zone = Zone(subnet, ttl)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self._lock = threading.Lock()
        self._counts = {}
        self.log = []  # (name, qtype) in arrival order
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="dnszone", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stopping = True
        try:
            # Wake the blocked recvfrom.
            poke = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            poke.sendto(b"", ("127.0.0.1", self.port))
            poke.close()
        except OSError:
            pass
        self._thread.join(timeout=5)
        self.sock.close()

    def count(self, name):
        """Queries received for name (any type)."""
        with self._lock:
            return self._counts.get(name.rstrip(".").lower(), 0)

    def reset(self):
        with self._lock:
            self._counts.clear()
            del self.log[:]

    def _serve(self):
        while not self._stopping:
            try:
                packet, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if self._stopping:
                return
            try:
                reply = self.answer(packet)
            except (ValueError, IndexError, struct.error):
                continue  # garbage: a real server would drop it too
            if reply:
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    pass

    def answer(self, packet):
        if len(packet) < 12:
            return None
        query_id, flags, qdcount = struct.unpack("!HHH", packet[:6])
        if flags & 0x8000:
            return None  # a response, not a query
        recursion_desired = flags & 0x0100
        if qdcount != 1:
            return struct.pack("!HHHHHH", query_id, 0x8000 | recursion_desired | RCODE_FORMERR,
                               0, 0, 0, 0)
        name, offset = decode_name(packet, 12)
        qtype, qclass = struct.unpack("!HH", packet[offset:offset + 4])
        question = packet[12:offset + 4]
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1
            self.log.append((name, qtype))
        answers, authority = [], []
        if name != "test" and not name.endswith(".test"):
            rcode = RCODE_REFUSED
        else:
            records = self.zone.lookup(name)
            if records is None:
                rcode = RCODE_NXDOMAIN
                authority.append(_soa(self.zone.ttl))
            else:
                rcode = RCODE_OK
                owner = name
                for _ in range(8):  # follow in-zone CNAMEs, as an authoritative server does
                    cname = [v for t, v in records if t == TYPE_CNAME]
                    if cname and qtype != TYPE_CNAME:
                        answers.append(_record(owner, TYPE_CNAME, self.zone.ttl,
                                               _rdata(TYPE_CNAME, cname[0])))
                        owner = cname[0]
                        records = self.zone.lookup(owner) or []
                        continue
                    for rtype, value in records:
                        if rtype == qtype:
                            answers.append(_record(owner, rtype, self.zone.ttl, _rdata(rtype, value)))
                    break
                if not answers:
                    authority.append(_soa(self.zone.ttl))
        header = struct.pack("!HHHHHH", query_id, 0x8000 | 0x0400 | recursion_desired | rcode,
                             1, len(answers), len(authority), 0)
        return header + question + b"".join(answers) + b"".join(authority)


def query(server_address, name, qtype=TYPE_A, timeout=2.0):
    """A minimal stub query: (rcode, [(type, value-bytes)]). For self-checks."""
    host, _, port = server_address.rpartition(":")
    packet = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + encode_name(name) \
        + struct.pack("!HH", qtype, CLASS_IN)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(packet, (host, int(port)))
        reply = s.recv(4096)
    finally:
        s.close()
    rcode = struct.unpack("!H", reply[2:4])[0] & 0xF
    ancount = struct.unpack("!H", reply[6:8])[0]
    _, offset = decode_name(reply, 12)
    offset += 4
    records = []
    for _ in range(ancount):
        _, offset = decode_name(reply, offset)
        rtype, _, _, length = struct.unpack("!HHIH", reply[offset:offset + 10])
        offset += 10
        records.append((rtype, reply[offset:offset + length]))
        offset += length
    return rcode, records
