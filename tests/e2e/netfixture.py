"""A private "outside world" for the network tests: a network namespace the
tests create with iproute2, holding a server on addresses that the host
routes to through a veth. Sandboxes are then tested against it, so no test
ever sends a packet to a real outside address.

    netns moatt-<pid>-srv         eth0: 198.18.n.2/24, 198.18.n.3/24, fd00:198:n::2/64,
                                        2001:db8:198:n::2/64,
                                        169.254.169.254/32, fd00:ec2::254/128
                                  default routes via the host side
    host  mtt<pid>                198.18.n.1/24, fd00:198:n::1/64, 2001:db8:198:n::1/64,
                                  169.254.169.254/32 and fd00:ec2::254/128 routed to the netns

198.18.0.0/15 is the benchmarking range (RFC 2544) and 2001:db8::/32 the
documentation range (RFC 3849): neither private nor on the internet, so they
stand for public addresses; fd00:198:n::2 is a ULA, a private address. The metadata addresses live in the netns too, so that a server
really listens there and a failed connection proves moat blocked it, not
that nothing answered.

One HTTP server (python3, dual-stack [::]:8000) answers GET on every address
with "fixture <local address>" and appends "<peer> <local>" to a log per
request; POST reads the body and answers "received <bytes>".
"""

import fcntl
import ipaddress
import os
import socket
import subprocess
import sys
import time

SERVER_PORT = 8000
# The metadata addresses are routed host-wide: one fixture at a time owns them.
METADATA_LOCK = "/run/lock/moat-e2e-metadata.lock"
METADATA_LOCK_WAIT = 600

_SERVER = r'''
import http.server, socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        local = self.connection.getsockname()[0]
        peer = self.client_address[0]
        for prefix in ("::ffff:",):
            local = local[len(prefix):] if local.startswith(prefix) else local
            peer = peer[len(prefix):] if peer.startswith(prefix) else peer
        log.write("%s %s\n" % (peer, local))
        body = ("fixture %s\n" % local).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        # Reads the whole upload, answers its size: traffic for the byte counters.
        length = int(self.headers.get("Content-Length") or 0)
        received = 0
        while received < length:
            chunk = self.rfile.read(min(65536, length - received))
            if not chunk:
                break
            received += len(chunk)
        body = ("received %d\n" % received).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
srv = Server(("::", int(sys.argv[2])), Handler)
print("ready", flush=True)
srv.serve_forever()
'''


def _run(*argv, check=True):
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), done.returncode, done.stderr.strip()))
    return done


def _subnet_free(n):
    """No route on the host already covers 198.18.n.0/24 or fd00:198:n::/64."""
    v4 = _run("ip", "-4", "route", "show", "198.18.%d.0/24" % n, check=False).stdout.strip()
    v6 = _run("ip", "-6", "route", "show", "fd00:198:%x::/64" % n, check=False).stdout.strip()
    v6 += _run("ip", "-6", "route", "show", "2001:db8:198:%x::/64" % n, check=False).stdout.strip()
    used = _run("ip", "-4", "addr", "show", "to", "198.18.%d.0/24" % n, check=False).stdout.strip()
    return not v4 and not v6 and not used


class NetFixture:
    """The server netns. setup() then teardown() (safe to call twice, and
    after a partial setup)."""

    def __init__(self):
        pid = os.getpid()
        self.netns = "moatt-%d-srv" % pid
        self.host_link = "mtt%d" % (pid % 10**8)   # interface names are at most 15 bytes
        self.subnet = None
        self.server = None
        self.log_path = "/tmp/moatt-%d-srv.log" % pid
        self.routes = []   # ("-4"|"-6", destination) added on the host
        self.lock_fd = None

    # addresses -----------------------------------------------------------

    def v4(self, host):
        return "198.18.%d.%d" % (self.subnet, host)

    def v6(self, host):
        return "fd00:198:%x::%x" % (self.subnet, host)

    @property
    def server_v4(self):
        return self.v4(2)

    @property
    def server_v4_other(self):
        """The same server, a second address: allowing .2 must not allow .3."""
        return self.v4(3)

    @property
    def server_v6(self):
        """A ULA (fc00::/7): private."""
        return self.v6(2)

    def v6_public(self, host):
        return "2001:db8:198:%x::%x" % (self.subnet, host)

    @property
    def server_v6_public(self):
        return self.v6_public(2)

    @property
    def host_v4(self):
        return self.v4(1)

    @property
    def host_v6(self):
        return self.v6(1)

    METADATA_V4 = "169.254.169.254"
    METADATA_V6 = "fd00:ec2::254"

    # lifecycle -----------------------------------------------------------

    def _lock_metadata(self):
        """Wait until no other fixture (another pytest process) routes the
        metadata addresses, then hold them until teardown."""
        os.makedirs(os.path.dirname(METADATA_LOCK), exist_ok=True)
        self.lock_fd = os.open(METADATA_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        deadline = time.monotonic() + METADATA_LOCK_WAIT
        while True:
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError("another network fixture held %s for %d s"
                                       % (METADATA_LOCK, METADATA_LOCK_WAIT))
                time.sleep(0.2)

    def setup(self):
        self._lock_metadata()
        for n in [(os.getpid() + i) % 250 + 2 for i in range(250)]:
            if _subnet_free(n):
                self.subnet = n
                break
        else:
            raise RuntimeError("no free 198.18.n.0/24 for the network fixture")
        ns, link = self.netns, self.host_link
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "addr", "add", self.host_v4 + "/24", "dev", link)
        _run("ip", "-6", "addr", "add", self.host_v6 + "/64", "dev", link, "nodad")
        _run("ip", "-6", "addr", "add", self.v6_public(1) + "/64", "dev", link, "nodad")
        _run("ip", "link", "set", link, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        for cidr in (self.server_v4 + "/24", self.server_v4_other + "/24", self.METADATA_V4 + "/32"):
            _run("ip", "-n", ns, "addr", "add", cidr, "dev", "eth0")
        for cidr in (self.server_v6 + "/64", self.server_v6_public + "/64", self.METADATA_V6 + "/128"):
            _run("ip", "-n", ns, "-6", "addr", "add", cidr, "dev", "eth0", "nodad")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        # Replies to sandboxes (moatd's pools) and to NATed traffic go back to the host.
        _run("ip", "-n", ns, "route", "add", "default", "via", self.host_v4)
        _run("ip", "-n", ns, "-6", "route", "add", "default", "via", self.host_v6)
        # The metadata addresses on the host route into the netns instead of
        # wherever the host's default route leads.
        _run("ip", "route", "add", self.METADATA_V4 + "/32", "via", self.server_v4, "dev", link)
        self.routes.append(("-4", self.METADATA_V4 + "/32"))
        _run("ip", "-6", "route", "add", self.METADATA_V6 + "/128", "via", self.server_v6, "dev", link)
        self.routes.append(("-6", self.METADATA_V6 + "/128"))
        open(self.log_path, "w").close()
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _SERVER, self.log_path, str(SERVER_PORT)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if self.server.stdout.readline().strip() != b"ready":
            raise RuntimeError("fixture server did not start: %s" % self.server.stderr.read(2000))
        # Everything the tests target must answer from the host, through our
        # veth: if a route were missing, a sandbox test could otherwise send
        # packets to a real outside address.
        for address in (self.server_v4, self.server_v4_other, self.server_v6, self.server_v6_public,
                        self.METADATA_V4, self.METADATA_V6):
            deadline = time.monotonic() + 10
            while True:
                try:
                    body = http_get(address, SERVER_PORT, timeout=2)
                    if body.strip() != "fixture %s" % address:
                        raise RuntimeError("%s answered %r: not our fixture" % (address, body))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)  # v6 neighbour discovery on a fresh link
        return self

    def teardown(self):
        if self.server is not None:
            if self.server.poll() is None:
                self.server.kill()
            self.server.wait()
            for stream in (self.server.stdout, self.server.stderr):
                stream.close()
            self.server = None
        for family, destination in self.routes:
            _run("ip", family, "route", "del", destination, check=False)
        self.routes = []
        # Deleting the netns destroys its end of the veth, and with it ours.
        _run("ip", "netns", "del", self.netns, check=False)
        if os.path.exists("/sys/class/net/" + self.host_link):
            _run("ip", "link", "del", self.host_link, check=False)
        try:
            os.unlink(self.log_path)
        except FileNotFoundError:
            pass
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the flock
            self.lock_fd = None

    # observations --------------------------------------------------------

    def requests(self):
        """[(peer, local)] for every request the server answered so far."""
        with open(self.log_path) as f:
            return [tuple(line.split()) for line in f if line.strip()]


def http_get(address, port, path="/", timeout=2.0, headers=None):
    """A plain HTTP/1.0 GET from the host; returns the body as str."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((address, port))
        lines = ["GET %s HTTP/1.0" % path, "Host: x"] + ["%s: %s" % kv for kv in (headers or {}).items()]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode("utf-8", "replace")


def is_v6(address):
    return ipaddress.ip_address(address).version == 6
