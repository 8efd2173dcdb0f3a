"""The API under attack: hostile HTTP on moatd's unix socket and on a tunnel.

Written from the attacker's side, beyond tests/e2e/test_bad_input.py (which
covers single malformed bodies and garbage request lines): request smuggling
shapes, framing of every response, header and URL floods, slow and
half-open clients, clients that never read, hostile ids and query strings,
token oracles of exposed ports, and cross-talk between concurrent clients.

Every case must end in one of two ways: a 4xx with the JSON error body
`{"error": {"code", "message"}}` when the request reached moatd's router, or
a 4xx from the HTTP layer (libevent) followed by a clean close when the bytes
are not parseable HTTP. Never a crash (moatd's pid alive, /v1/health ok after
each case), never a hang (each exchange is bounded in time), no leak (fds and
RSS back near the baseline: the autouse fixture `daemon_unharmed`), no
cross-talk (each client reads only its own replies).
"""

import json
import os
import re
import socket
import threading
import time

import pytest

import attack
import moatd_harness
from moatd_harness import vmrss_kib

moat = moatd_harness.moat

# Bounds. Generous: 2 shared cores, other suites running at the same time.
EXCHANGE_TIMEOUT_S = 5.0      # one attack's request/response exchange
RSS_GROWTH_MAX_KIB = 32 * 1024  # per test, after the attack's connections are gone
API_IO_TIMEOUT_S = 60         # src/daemon/api.c: an idle client is dropped after this
SLOW_HEAD_DEADLINE_S = 15.0   # a request head trickled this long must have been cut off
NO_SANDBOX = "sb-0000000000000000"


# --- raw HTTP on the socket ---------------------------------------------------------

def exchange(path, data, timeout=EXCHANGE_TIMEOUT_S, pause_after_send=None):
    """Send data on a fresh connection, read until moatd closes it or
    `timeout` passes. Returns (received bytes, closed by moatd, seconds)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    received = bytearray()
    closed = False
    start = time.monotonic()
    try:
        sock.connect(path)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # moatd answered and closed before taking everything: read the answer
        deadline = start + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        sock.close()
    return bytes(received), closed, time.monotonic() - start


def parse_responses(data, methods):
    """Split a byte stream into responses, framed as RFC 9112 says a client
    must: no body for a HEAD request's response, else Content-Length or
    chunked. `methods` lists the request methods in order. Returns
    ([(status, headers, body)], leftover bytes); stops at the first response
    it cannot frame (its bytes are the leftover)."""
    responses = []
    rest = data
    for method in methods:
        head_end = rest.find(b"\r\n\r\n")
        if head_end < 0:
            break
        lines = rest[:head_end].decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/1\.[01] (\d{3}) ?.*", lines[0])
        if not match:
            break
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        body_start = head_end + 4
        if method == "HEAD":
            responses.append((int(match.group(1)), headers, b""))
            rest = rest[body_start:]
            continue
        if "chunked" in headers.get("transfer-encoding", ""):
            body, cursor = bytearray(), body_start
            while True:
                eol = rest.find(b"\r\n", cursor)
                if eol < 0:
                    return responses, rest
                size = int(rest[cursor:eol].split(b";")[0], 16)
                if size == 0:
                    cursor = rest.find(b"\r\n\r\n", eol) + 4 if rest[eol + 2:eol + 4] != b"\r\n" else eol + 4
                    break
                body += rest[eol + 2:eol + 2 + size]
                cursor = eol + 2 + size + 2
            responses.append((int(match.group(1)), headers, bytes(body)))
            rest = rest[cursor:]
            continue
        if "content-length" not in headers:
            break  # unframed: only a close could end it
        length = int(headers["content-length"])
        if len(rest) < body_start + length:
            break
        responses.append((int(match.group(1)), headers, rest[body_start:body_start + length]))
        rest = rest[body_start + length:]
    return responses, rest


def assert_json_error(status, headers, body, statuses, codes=None):
    """A 4xx that moatd's router produced: JSON error body with a stable code."""
    assert status in statuses, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:200])
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    assert re.fullmatch(r"[a-z_]+", doc["error"]["code"]), doc
    if codes:
        assert doc["error"]["code"] in codes, doc
    return doc["error"]


def request_bytes(method, path, body=None, headers=None, close=False):
    """One request; keep-alive unless close."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: moat"]
    if close:
        lines.append("Connection: close")
    if body is not None:
        if isinstance(body, str):
            body = body.encode()
        lines.append("Content-Length: %d" % len(body))
    for key, value in (headers or {}).items():
        lines.append("%s: %s" % (key, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


HEALTH_CLOSE = request_bytes("GET", "/v1/health", close=True)


# --- the daemon must come out of every case unharmed -----------------------------------

@pytest.fixture(autouse=True)
def daemon_unharmed(moatd):
    """After each case: moatd alive, health answers, fds back to the baseline,
    RSS grown by less than RSS_GROWTH_MAX_KIB."""
    fds_before = moatd.settled_fd_count()
    rss_before = vmrss_kib(moatd.pid)
    yield
    assert moatd.proc.poll() is None, "moatd died: status %s" % moatd.proc.returncode
    assert moatd.healthy(timeout=5)["ok"] is True
    fds_after = moatd.settled_fd_count(target=fds_before, wait=10)
    assert fds_after <= fds_before, "moatd fds %d -> %d: %s" % (
        fds_before, fds_after, sorted(moatd_harness._fd_targets(moatd.pid)))
    grown = vmrss_kib(moatd.pid) - rss_before
    assert grown < RSS_GROWTH_MAX_KIB, "moatd RSS grew by %d KiB" % grown


# --- request smuggling shapes ----------------------------------------------------------

WAIT_NONE = "POST /v1/sandboxes/%s/wait HTTP/1.1\r\nHost: moat\r\n" % NO_SANDBOX
WAIT_NONE = WAIT_NONE.encode()

# Shapes the HTTP layer must refuse outright: a 4xx (or libevent's 501 for a
# method it does not know) and the connection closed, so no byte after them
# is ever read as a request.
REFUSED_SHAPES = {
    "cl-and-te": WAIT_NONE + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "negative-cl": WAIT_NONE + b"Content-Length: -1\r\n\r\n{}",
    "hex-cl": WAIT_NONE + b"Content-Length: 0x2\r\n\r\n{}",
    "te-chunked-identity": WAIT_NONE + b"Transfer-Encoding: chunked, identity\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "te-identity-and-cl": WAIT_NONE + b"Transfer-Encoding: identity\r\nContent-Length: 2\r\n\r\n{}",
    "two-te-headers": WAIT_NONE + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
                                  b"2\r\n{}\r\n0\r\n\r\n",
    "chunk-size-overflow": WAIT_NONE + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
    "chunk-size-int64-max": WAIT_NONE + b"Transfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\n{}\r\n0\r\n\r\n",
    "chunk-size-negative": WAIT_NONE + b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
    "chunk-size-not-hex": WAIT_NONE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    # RFC 9112 allows chunk extensions; libevent 2.1 refuses them (as 413):
    # refused is safe, only never half-parsed.
    "chunk-extension": WAIT_NONE + b"Transfer-Encoding: chunked\r\n\r\n2;ext=1\r\n{}\r\n0\r\n\r\n",
    "obs-fold-first-line": b"GET /v1/health HTTP/1.1\r\n folded\r\nHost: moat\r\n\r\n",
    "bare-cr": b"GET /v1/health HTTP/1.1\rHost: moat\r\r\n\r\n",
    "nul-in-request-line": b"GET /v1/he\x00alth HTTP/1.1\r\nHost: moat\r\n\r\n",
    "http-0.9": b"GET /v1/health\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "lowercase-method": b"get /v1/health HTTP/1.1\r\nHost: moat\r\n\r\n",
    "1kib-method": b"A" * 1024 + b" /v1/health HTTP/1.1\r\nHost: moat\r\n\r\n",
    "unknown-method": b"PROPFIND /v1/health HTTP/1.1\r\nHost: moat\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(REFUSED_SHAPES))
def test_unframeable_requests_are_refused_and_closed(moatd, name):
    """Attack: a message whose length or syntax two HTTP parsers could read
    differently. Bound: one 4xx (501 for an unknown method) from the HTTP
    layer, then moatd closes the connection within EXCHANGE_TIMEOUT_S; the
    health request pipelined behind it is never answered."""
    data, closed, _ = exchange(moatd.socket, REFUSED_SHAPES[name] + HEALTH_CLOSE)
    responses, _ = parse_responses(data, ["GET", "GET"])
    assert responses, "no reply at all: %r" % data[:300]
    status = responses[0][0]
    assert 400 <= status < 500 or (status == 501 and "method" in name), (status, data[:300])
    assert closed, "connection left open after a refused message: %r" % data[:300]
    assert len(responses) == 1 and b'"ok":true' not in data, \
        "bytes after a refused message were served as a request: %r" % data[:600]


def hidden_delete(sandbox_id):
    return request_bytes("DELETE", "/v1/sandboxes/%s" % sandbox_id)


def smuggle_cl_first_zero(hidden):
    return WAIT_NONE + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(hidden) + hidden


def smuggle_space_before_colon(hidden):
    return WAIT_NONE + b"Content-Length : %d\r\n\r\n" % len(hidden) + hidden


def smuggle_xchunked(hidden):
    return WAIT_NONE + b"Transfer-Encoding: xchunked\r\n\r\n" + hidden + b"\r\n0\r\n\r\n"


def smuggle_in_cl_body(hidden):
    return WAIT_NONE + b"Content-Length: %d\r\n\r\n" % len(hidden) + hidden


def smuggle_in_chunk(hidden):
    return WAIT_NONE + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(hidden) + hidden + b"\r\n0\r\n\r\n"


def smuggle_cl_and_te(hidden):
    return (WAIT_NONE + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(hidden)
            + hidden + b"\r\n0\r\n\r\n")


def smuggle_te_and_cl_zero(hidden):
    return (WAIT_NONE + b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n%x\r\n" % len(hidden)
            + hidden + b"\r\n0\r\n\r\n")


def smuggle_get_body(hidden):
    head = b"GET /v1/health HTTP/1.1\r\nHost: moat\r\nContent-Length: %d\r\n\r\n" % len(hidden)
    return head + hidden


def smuggle_chunked_trailer(hidden):
    # The hidden request's lines as trailer fields of a chunked body.
    return WAIT_NONE + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-A: " + hidden.replace(
        b"\r\n\r\n", b"\r\n") + b"\r\n"


@pytest.mark.parametrize("shape", [
    smuggle_in_cl_body,
    smuggle_in_chunk,
    smuggle_cl_and_te,
    smuggle_te_and_cl_zero,
    smuggle_get_body,
    smuggle_chunked_trailer,
    smuggle_cl_first_zero,
    smuggle_space_before_colon,
    smuggle_xchunked,
], ids=lambda f: f.__name__.replace("smuggle_", ""))
def test_request_hidden_in_a_body_is_never_executed(moatd, sandbox, shape):
    """Attack: a DELETE of a real sandbox hidden in the body of a request
    (request smuggling: the body's length is ambiguous, or the hidden bytes
    are only body). Bound: the sandbox is still running afterwards; the
    exchange ends within EXCHANGE_TIMEOUT_S."""
    exchange(moatd.socket, shape(hidden_delete(sandbox.id)) + HEALTH_CLOSE, timeout=3.0)
    time.sleep(0.2)  # a smuggled DELETE would be in flight by now
    info = moat.Client(moatd.socket).request("GET", "/v1/sandboxes/%s" % sandbox.id)
    assert info["state"] == "running", "the hidden DELETE was executed: %s" % info


# Oddities libevent accepts. Each is harmless only if the message is framed
# exactly once: the reply is what the first request asked for, and the
# health request pipelined behind it gets its own, intact 200.
ACCEPTED_SHAPES = {
    # RFC 9110 lets a server accept identical duplicates; moatd refuses any repeat (bad_framing).
    "duplicate-identical-cl": (WAIT_NONE + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400),
    "te-uppercase": (WAIT_NONE + b"Transfer-Encoding: CHUNKED\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 404),
    "te-tab": (WAIT_NONE + b"Transfer-Encoding:\tchunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 404),
    "chunk-trailer": (WAIT_NONE + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-T: 1\r\n\r\n", 404),
    "obs-fold": (b"GET /v1/nothing HTTP/1.1\r\nHost: moat\r\nX-A: 1\r\n continued\r\n\r\n", 404),
    "bare-lf": (b"GET /v1/nothing HTTP/1.1\nHost: moat\n\n", 404),
    "nul-in-header-value": (b"GET /v1/nothing HTTP/1.1\r\nHost: mo\x00at\r\n\r\n", 404),
    "absolute-form": (b"GET http://evil.example/v1/nothing HTTP/1.1\r\nHost: moat\r\n\r\n", 404),
    "absolute-form-no-path": (b"GET http://evil.example HTTP/1.1\r\nHost: moat\r\n\r\n", 400),
    "asterisk-form": (b"OPTIONS * HTTP/1.1\r\nHost: moat\r\n\r\n", 405),  # only GET/POST/PUT/DELETE are served
    "trace": (b"TRACE /v1/health HTTP/1.1\r\nHost: moat\r\n\r\n", 405),
    "http-1.0-keep-alive": (b"GET /v1/nothing HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 404),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED_SHAPES))
def test_accepted_oddities_are_framed_once(moatd, name):
    """Attack: syntax at the edge of RFC 9112 that libevent accepts. Bound:
    the first reply is moatd's JSON error for what was asked, and the
    pipelined health request behind it gets its own 200 (or the connection
    is closed): never a reply to bytes of the first request."""
    first, expected = ACCEPTED_SHAPES[name]
    data, closed, _ = exchange(moatd.socket, first + HEALTH_CLOSE)
    responses, leftover = parse_responses(data, ["GET", "GET"])
    assert responses, data[:300]
    assert_json_error(*responses[0], statuses=(expected,))
    if len(responses) == 1:
        assert closed and not leftover, "unframed bytes after the first reply: %r" % data[:600]
    else:
        assert responses[1][0] == 200 and json.loads(responses[1][2])["ok"] is True, responses[1]
        assert not leftover, leftover[:200]


@pytest.mark.parametrize("method", ["HEAD", "CONNECT"])
def test_head_and_connect_replies_are_framed(moatd, method):
    """Attack: HEAD / CONNECT followed by a pipelined request (response
    desynchronisation: a client takes bytes of one reply for the next).
    Bound: the first reply is framed (no body for HEAD; Content-Length or a
    close for CONNECT) and the second is the health 200, within
    EXCHANGE_TIMEOUT_S."""
    data, closed, _ = exchange(moatd.socket, request_bytes(method, "/v1/health") + HEALTH_CLOSE, timeout=3)
    assert re.match(rb"HTTP/1\.1 4\d\d ", data), data[:400]
    responses, leftover = parse_responses(data, [method, "GET"])
    assert responses, "first reply not framed (no Content-Length, connection kept): %r" % data[:400]
    if len(responses) == 1:
        assert closed and not leftover, "reply not framed: %r" % data[:400]
    else:
        assert responses[1][0] == 200 and not leftover, data[:400]


# --- huge and many headers -------------------------------------------------------------

HEAD_FLOODS = {
    "1mib-header": b"GET /v1/health HTTP/1.1\r\nHost: moat\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
    "10k-headers": b"GET /v1/health HTTP/1.1\r\nHost: moat\r\n"
                   + b"".join(b"X-%d: v\r\n" % i for i in range(10000)) + b"\r\n",
    "100kib-url": b"GET /v1/sandboxes/" + b"a" * (100 * 1024) + b" HTTP/1.1\r\nHost: moat\r\n\r\n",
    "100kib-query": b"GET /v1/sandboxes?tag=" + b"%41" * (34 * 1024) + b" HTTP/1.1\r\nHost: moat\r\n\r\n",
    "1mib-no-newline": b"GET /v1/health HTTP/1.1\r\nHost: moat\r\nX: " + b"a" * (1 << 20),
}


@pytest.mark.parametrize("name", sorted(HEAD_FLOODS))
def test_header_floods_are_refused(moatd, name):
    """Attack: a request head far beyond the 16 KiB header limit (one huge
    header, 10k headers, a 100 KiB URL or query, a line that never ends).
    Bound: a 4xx and a close within EXCHANGE_TIMEOUT_S, nothing served."""
    with attack.responsive(moatd):
        data, closed, elapsed = exchange(moatd.socket, HEAD_FLOODS[name])
    responses, _ = parse_responses(data, ["GET"])
    assert responses and 400 <= responses[0][0] < 500, data[:300]
    assert closed, "connection kept after %s (%.1fs)" % (name, elapsed)


# --- slow, half-open and non-reading clients -------------------------------------------

@pytest.fixture(scope="module")
def slowloris(moatd):
    """Four clients trickle a request head, one byte per 100 ms, for up to
    SLOW_HEAD_DEADLINE_S while health is measured. Returns (health samples,
    {client: seconds until moatd closed it, or None})."""
    head = b"GET /v1/health HTTP/1.1\r\nHost: moat\r\n" + b"X-Slow: " + b"a" * 10000
    dropped_after = {}

    def trickle(index):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(moatd.socket)
        start = time.monotonic()
        dropped_after[index] = None
        try:
            for byte in head:
                if time.monotonic() - start > SLOW_HEAD_DEADLINE_S:
                    break
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    dropped_after[index] = time.monotonic() - start
                    break
                time.sleep(0.1)
        finally:
            sock.close()

    with attack.responsive(moatd, check=False) as health:
        threads = [threading.Thread(target=trickle, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SLOW_HEAD_DEADLINE_S + 10)
    return health, dropped_after


def test_slowloris_does_not_starve_other_clients(moatd, slowloris):
    """Attack: slowloris, four clients each sending one header byte per
    100 ms. Bound: health p99 <= attack.HEALTH_P99_MAX_MS and max <=
    attack.HEALTH_MAX_MS while it lasts."""
    health, _ = slowloris
    health.check()


@pytest.mark.xfail(strict=True, reason=(
    "known gap (docs/SECURITY.md, Known limits): moatd's only client timeout is libevent's "
    "per-read timeout (60 s, reset by every byte), so a head trickled at 10 bytes/s is held for "
    "up to 16 KiB / 10 B/s = 27 min per connection. libevent 2.1 has no hook at the start of a "
    "request (evhttp_set_newreqcb is 2.2), so a whole-head deadline waits for it; other clients "
    "stay served meanwhile (test_slowloris_does_not_starve_other_clients)"))
def test_slowloris_head_is_cut_off_by_a_deadline(moatd, slowloris):
    """Attack: slowloris, one header byte per 100 ms. Bound: moatd drops each
    such connection within SLOW_HEAD_DEADLINE_S."""
    _, dropped_after = slowloris
    assert all(v is not None for v in dropped_after.values()), \
        "trickling clients still connected after %.0f s: %s" % (SLOW_HEAD_DEADLINE_S, dropped_after)


def test_many_half_open_connections(moatd):
    """Attack: 300 connections at once, each with half a request head (and
    300 more with a head but half a body). Bound: health stays within
    attack.responsive's bounds meanwhile; every fd is released when they
    close."""
    socks = []
    try:
        with attack.responsive(moatd):
            for i in range(600):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(moatd.socket)
                if i % 2:
                    s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: mo")
                else:
                    s.sendall(b"POST /v1/sandboxes HTTP/1.1\r\nHost: moat\r\nContent-Length: 100\r\n\r\n{\"im")
                socks.append(s)
            time.sleep(1.0)
            assert moatd.fd_count() >= 300, "moatd did not even accept the connections"
    finally:
        for s in socks:
            s.close()


def test_client_disconnects_mid_body(moatd):
    """Attack: 50 clients that announce a 1 MiB body, send half and hang up
    (plus 50 that hang up mid-head). Bound: nothing created, every fd and
    the buffered half bodies released (checked by daemon_unharmed)."""
    before = len(moat.Client(moatd.socket).request("GET", "/v1/sandboxes")["sandboxes"])
    for i in range(100):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(moatd.socket)
        if i % 2:
            s.sendall(b"POST /v1/sandboxes HTTP/1.1\r\nHost: moat\r\nContent-Length: 1048576\r\n\r\n"
                      + b" " * (512 * 1024))
        else:
            s.sendall(b"POST /v1/sandboxes HTTP/1.1\r\nHost: moat\r\nContent-Len")
        s.close()
    after = len(moat.Client(moatd.socket).request("GET", "/v1/sandboxes")["sandboxes"])
    assert after == before


@pytest.mark.parametrize("announced", [8 * 1024 * 1024 + 1, 100 * 1024 * 1024, 2 ** 63 - 1,
                                       10 ** 30], ids=["8mib+1", "100mib", "int64-max", "10^30"])
def test_huge_body_announced_but_not_sent(moatd, announced):
    """Attack: a Content-Length far over the 8 MiB hard limit (up to one
    that overflows 64 bits) with no body behind it. Bound: nothing is
    allocated for it (RSS), the request is never executed (no 2xx), health
    stays within bounds, and the fd goes when the client does. (libevent
    2.1's lingering close waits for the announced bytes before its 413, so
    the client gets no early answer: it is dropped at API_IO_TIMEOUT_S.)"""
    with attack.responsive(moatd):
        data, closed, _ = exchange(
            moatd.socket, b"POST /v1/sandboxes HTTP/1.1\r\nHost: moat\r\nContent-Length: %d\r\n\r\n{}" % announced,
            timeout=2.0)
    responses, _ = parse_responses(data, ["POST"])
    assert not responses or 400 <= responses[0][0] < 500, data[:300]


@pytest.mark.parametrize("route,size,statuses,json_body", [
    ("/v1/sandboxes", 1024 * 1024 + 1, (413,), True),
    ("/v1/sandboxes", 8 * 1024 * 1024, (413,), True),
    ("/v1/sandboxes", 8 * 1024 * 1024 + 1, (413,), False),
    ("/v1/images/build", 8 * 1024 * 1024 + 1, (413,), False),
], ids=["1mib+1", "8mib", "8mib+1", "build-8mib+1"])
def test_oversized_bodies(moatd, route, size, statuses, json_body):
    """Attack: bodies just over the 1 MiB API limit, at the 8 MiB hard limit
    and over it. Bound: 413 (JSON payload_too_large up to 8 MiB, libevent's
    plain 413 past it) within EXCHANGE_TIMEOUT_S, then a close."""
    data, closed, _ = exchange(moatd.socket, request_bytes("POST", route, b" " * size))
    responses, _ = parse_responses(data, ["POST"])
    assert responses, data[:300]
    if json_body:
        assert_json_error(*responses[0], statuses=statuses, codes={"payload_too_large"})
    else:
        assert responses[0][0] in statuses, data[:300]
        assert closed, "the rest of an over-limit body must not be read as requests"


def test_client_that_never_reads_a_large_download(moatd, sandbox):
    """Attack: clients that ask for a 64 MiB file (and 2000 pipelined
    listings) and never read the replies. Bound: moatd keeps at most about
    1 MiB ahead per stream (RSS grows < RSS_GROWTH_MAX_KIB), health stays
    within bounds, and the fds go when the clients close."""
    sandbox.run("head -c 67108864 /dev/zero > /tmp/big")
    rss_before = vmrss_kib(moatd.pid)
    path = "/v1/sandboxes/%s/files/content?path=/tmp/big" % sandbox.id
    socks = []
    try:
        with attack.responsive(moatd):
            for _ in range(4):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(moatd.socket)
                s.sendall(request_bytes("GET", path))
                socks.append(s)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(moatd.socket)
            s.settimeout(5)
            try:
                s.sendall(request_bytes("GET", "/v1/sandboxes") * 2000)
            except socket.timeout:
                pass  # moatd stopped reading: the pipeline is backpressured
            socks.append(s)
            time.sleep(2.0)
            grown = vmrss_kib(moatd.pid) - rss_before
        assert grown < RSS_GROWTH_MAX_KIB, "moatd buffered %d KiB for clients that never read" % grown
    finally:
        for s in socks:
            s.close()


# --- hostile bodies --------------------------------------------------------------------

BODIES = {
    "nesting-100k-brackets": b"[" * 100000,
    "nesting-100k-objects": b'{"a":' * 100000,
    "nesting-in-a-field": b'{"tags":' + b'[{"a":' * 50000,
    "huge-integer": b'{"memory": ' + b"9" * 500000 + b"}",
    "1e999": b'{"memory": 1e999}',
    "-1e999": b'{"cpu": -1e999}',
    "nan": b'{"cpu": NaN}',
    "infinity": b'{"cpu": Infinity}',
    "float-for-integer": b'{"memory": 512.0}',
    "exponent-for-integer": b'{"pids": 5.12e2}',
    "surrogate-value": b'{"tags": {"k": "\\ud800"}}',
    "surrogate-key": b'{"tags": {"\\udfff": "v"}}',
    "nul-escape-in-key": b'{"tags": {"a\\u0000b": "v"}}',
    "nul-escape-in-image": b'{"image": "host\\u0000/../../etc"}',
    "raw-nul-byte": b'{"image": "ho\x00st"}',
    "overlong-utf8-slash": b'{"tags": {"k": "\xc0\xaf"}}',
    "900k-string": b'{"image": "' + b"a" * 900000 + b'"}',
    "duplicate-nested-key": b'{"tags": {"k": "1", "k": "2"}}',
    "utf8-bom": b'\xef\xbb\xbf{}',
    "two-objects": b"{}{}",
    "trailing-garbage": b"{} x",
    "200k-tags": b'{"tags": {' + b",".join(b'"k%d":""' % i for i in range(50000)) + b"}}",
    "hostile-image-traversal": b'{"image": "../../../../etc"}',
    "hostile-image-absolute": b'{"image": "/etc/passwd"}',
    "hostile-image-double-slash": b'{"image": "a//b"}',
    "hostile-image-uppercase": b'{"image": "HOST"}',
    "hostile-image-newline": b'{"image": "host\\nx"}',
    "hostile-volume-name": b'{"volumes": {"/data": "../../etc"}}',
    "hostile-volume-target": b'{"volumes": {"/proc/../etc": "v"}}',
    "hostile-workdir-nul": b'{"workdir": "/tmp\\u0000/x"}',
    "hostile-user": b'{"user": "root\\n0:0"}',
}




@pytest.mark.parametrize("name", sorted(BODIES) + [
    "hostile-tag-key-equals"])
def test_hostile_create_bodies(moatd, name):
    """Attack: a create body built to break the JSON decoder or the
    validation behind it (depth, size, number edge cases, bad Unicode, NUL,
    hostile names). Bound: 400 invalid_argument (413 past 1 MiB, 404 for an
    image name that is well formed but unknown) within EXCHANGE_TIMEOUT_S;
    no sandbox created."""
    body = BODIES.get(name) or b'{"tags": {"a=b": "c"}}'
    client = moat.Client(moatd.socket)
    before = {sb["id"] for sb in client.request("GET", "/v1/sandboxes")["sandboxes"]}
    try:
        data, _, _ = exchange(moatd.socket, request_bytes("POST", "/v1/sandboxes", body, close=True))
        responses, _ = parse_responses(data, ["POST"])
        assert responses, data[:300]
        assert_json_error(*responses[0], statuses=(400, 404, 413))
    finally:
        for sb in client.request("GET", "/v1/sandboxes")["sandboxes"]:
            if sb["id"] not in before:
                client.request("DELETE", "/v1/sandboxes/%s" % sb["id"])


EXEC_BODIES = {
    "argv-200k-elements": b'{"argv": [' + b",".join([b'"x"'] * 200000) + b"]}",
    "argv-1m-elements-over-limit": b'{"argv": [' + b",".join([b'""'] * 1000000) + b"]}",
    "argv-nested-arrays": b'{"argv": [["x"]]}',
    "argv-nul": b'{"argv": ["tr\\u0000ue"]}',
    "env-key-with-equals": b'{"argv": ["true"], "env": {"A=B": "c"}}',
    "env-5000-keys": b'{"argv": ["true"], "env": {' + b",".join(b'"K%d":"v"' % i for i in range(5000)) + b"}}",
    "tag-too-long": b'{"argv": ["true"], "tag": "' + b"t" * 65 + b'"}',
    "timeout-float-nan-string": b'{"argv": ["true"], "timeout": "NaN"}',
    "timeout-negative": b'{"argv": ["true"], "timeout": -1}',
    "timeout-huge": b'{"argv": ["true"], "timeout": 1e308}',
    "user-traversal": b'{"argv": ["true"], "user": "../../root"}',
    "workdir-relative": b'{"argv": ["true"], "workdir": "../.."}',
}


@pytest.mark.parametrize("name", sorted(EXEC_BODIES))
def test_hostile_exec_bodies(moatd, sandbox, name):
    """Attack: exec bodies with huge argv/env, NUL, nested types, number
    edge cases and traversal in names. Bound: a JSON 4xx (400/404/413)
    within EXCHANGE_TIMEOUT_S; no process started."""
    path = "/v1/sandboxes/%s/execs" % sandbox.id
    data, _, _ = exchange(moatd.socket, request_bytes("POST", path, EXEC_BODIES[name], close=True))
    responses, _ = parse_responses(data, ["POST"])
    assert responses, data[:300]
    assert_json_error(*responses[0], statuses=(400, 404, 413))
    assert moat.Client(moatd.socket).request("GET", path)["execs"] == [] or all(
        e["argv"][:1] != ["true"] for e in moat.Client(moatd.socket).request("GET", path)["execs"])


def test_wrong_content_type_is_not_a_bypass(moatd):
    """Attack: a create body sent as a form or text. Bound: parsed as JSON
    like any body (400 invalid_argument); nothing created."""
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; b=x"):
        data, _, _ = exchange(moatd.socket, request_bytes(
            "POST", "/v1/sandboxes", b"image=host&memory=64", {"Content-Type": content_type}, close=True))
        responses, _ = parse_responses(data, ["POST"])
        assert_json_error(*responses[0], statuses=(400,), codes={"invalid_argument"})


# --- hostile ids, names and query strings -----------------------------------------------

HOSTILE_PATHS = [
    "/v1/sandboxes/..%2F..%2Fetc",
    "/v1/sandboxes/..%2f..%2f..%2fetc%2fpasswd",
    "/v1/sandboxes/%2e%2e",
    "/v1/sandboxes/..",
    "/v1/sandboxes/.",
    "/v1/sandboxes/sb-0000000000000000%00",
    "/v1/sandboxes/%00",
    "/v1/sandboxes/%252e%252e%252fetc",
    "/v1/sandboxes/" + "a" * 10240,
    "/v1/sandboxes/sb-%C3%A9%C3%A9%C3%A9",
    "/v1/sandboxes/sb-\xc3\xa9",
    "/v1/sandboxes/%ff%fe",
    "/v1/sandboxes/sb-0000000000000000/execs/..%2F..",
    "/v1/sandboxes/sb-0000000000000000/execs/" + "e" * 127,
    "/v1/sandboxes//execs",
    "/v1/images/..%2F..%2Fetc%2Fpasswd",
    "/v1/images/%2Fetc%2Fpasswd",
    "/v1/images/" + "i" * 5000,
    "/v1/volumes/..%2F..",
    "/v1/volumes/.",
    "/v1/volumes/%00",
    "/v1/volumes/" + "v" * 5000,
    "/v1/volumes/x/files/content?path=/../../etc/passwd",
    "/v1/sandboxes?tag=%zz",
    "/v1/sandboxes?tag=%",
    "/v1/sandboxes?tag=a%00=b",
    "/v1/sandboxes?state=running&state=stopped&state=%ff",
    "/v1/sandboxes?" + "&".join(["tag=k=v"] * 2000),
    "/v1/sandboxes?tag=" + "k" * 8000 + "=v",
    "/v1/sandboxes?;;;&&&===",
    "/v1/sandboxes#fragment",
    "/v1/../v1/health",
    "//v1/health",
    "/v1/health/",
    "/V1/HEALTH",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=lambda p: p[:48])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_hostile_ids_and_queries(moatd, method, path):
    """Attack: traversal, NUL, double encoding, 10 KiB ids, non-UTF-8 and
    Unicode in ids, names and query strings. Bound: a JSON 4xx from the
    router (or a plain 4xx + close for bytes libevent will not parse),
    within EXCHANGE_TIMEOUT_S; never a 2xx that names something outside
    moat's objects, never a 5xx."""
    raw_path = path.encode("latin-1") if "\xc3" in path else path.encode()
    data, closed, _ = exchange(moatd.socket, request_bytes(method, "PATH", close=True).replace(b"PATH", raw_path))
    responses, _ = parse_responses(data, [method])
    assert responses, data[:300]
    status, headers, body = responses[0]
    assert status < 500, (status, body[:300])
    if status < 300:
        # Only lists may answer: a hostile filter that parses must still match nothing dangerous.
        assert path.startswith(("/v1/sandboxes?", "/v1/sandboxes#")) and method == "GET", (status, body[:300])
        assert "sandboxes" in json.loads(body)
        return
    if headers.get("content-type", "").startswith("application/json"):
        assert_json_error(status, headers, body, statuses=(400, 404, 405))
    else:
        assert 400 <= status < 500 and closed, (status, body[:200])


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_nul_in_an_encoded_name_does_not_truncate_it(moatd, method):
    """Attack: `%00` inside a %-encoded image reference, so that the name
    moatd acts on is a prefix of the one sent (`host%00.evil`). Bound: 400
    invalid_argument or 404, never the `host` image's reply."""
    data, _, _ = exchange(moatd.socket, request_bytes(method, "/v1/images/host%00.evil", close=True))
    responses, _ = parse_responses(data, [method])
    assert_json_error(*responses[0], statuses=(400, 404))


def test_hostile_volume_names(moatd):
    """Attack: volume names with traversal, NUL, slashes and huge sizes.
    Bound: 400 invalid_argument each; no volume created."""
    names = ["../x", "..", ".", "a/b", "/abs", "a\u0000b", "x" * 5000, "é", "a b", ""]
    for name in names:
        data, _, _ = exchange(moatd.socket, request_bytes(
            "POST", "/v1/volumes", json.dumps({"name": name, "size": 16}), close=True))
        responses, _ = parse_responses(data, ["POST"])
        assert_json_error(*responses[0], statuses=(400,))
    listed = moat.Client(moatd.socket).request("GET", "/v1/volumes")
    assert not listed.get("volumes"), listed


# --- tunnel token oracle -----------------------------------------------------------------

TUNNEL_PORT = 8099


@pytest.fixture(scope="module")
def tunneled(moatd):
    """A sandbox exposing a private port with nothing listening behind it."""
    sb = moat.Sandbox.create(socket=moatd.socket, ports=[TUNNEL_PORT])
    try:
        yield sb, sb.tunnels()[TUNNEL_PORT]
    finally:
        sb.terminate()


def tunnel_exchange(tunnel, data, timeout=EXCHANGE_TIMEOUT_S):
    sock = socket.create_connection(("127.0.0.1", tunnel.host_port), timeout=timeout)
    received = bytearray()
    try:
        sock.sendall(data)
        while True:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    return bytes(received)


def without_date(reply):
    return re.sub(rb"\r\nDate: [^\r]*", b"", reply)


def test_tunnel_wrong_tokens_are_indistinguishable(tunneled):
    """Attack: token oracle on an exposed port: wrong tokens of every length
    0..129, the correct token minus its last byte, plus one byte, with one
    byte flipped at the start or the end, upper-cased, in the header, in the
    query, twice. Bound: every wrong token gets a byte-identical 401
    unauthorized (apart from Date), so the reply never depends on how much
    of the token matched; the correct token is admitted (502: nothing
    listens behind it). Timing is not measured here: on a shared 2-core
    machine a statistical check of a 64-byte compare would be flaky; the
    compare is constant-time by construction (token_matches in
    src/daemon/tunnel.c)."""
    _, tunnel = tunneled
    token = tunnel.token
    assert re.fullmatch(r"[0-9a-f]{64}", token), token
    flip = {"0": "1"}.get(token[0], "0")
    flip_last = {"0": "1"}.get(token[-1], "0")
    wrong = ["x" * n for n in range(0, 130, 7)] + [
        token[:-1], token + "0", flip + token[1:], token[:-1] + flip_last, token[:32],
        token.upper() if token.upper() != token else token + "A", "-" + token[1:], token[:63] + "\x7f",
    ]
    replies = []
    for candidate in wrong:
        for request in (
                b"GET / HTTP/1.1\r\nHost: t\r\nX-Moat-Token: %s\r\n\r\n" % candidate.encode("latin-1"),
                b"GET /?moat_token=%s HTTP/1.1\r\nHost: t\r\n\r\n" % candidate.encode("latin-1"),
                b"GET /?a=1&moat_token=%s&moat_token=x HTTP/1.1\r\nHost: t\r\n\r\n" % candidate.encode("latin-1")):
            reply = tunnel_exchange(tunnel, request)
            assert reply.startswith(b"HTTP/1.1 401 "), (candidate, reply[:200])
            replies.append(without_date(reply))
    assert b'"code":"unauthorized"' in replies[0], replies[0]
    assert len(set(replies)) == 1, "401 replies differ with the token tried: %s" % sorted(set(replies))[:3]
    for request in (b"GET / HTTP/1.1\r\nHost: t\r\nX-Moat-Token: %s\r\n\r\n" % token.encode(),
                    b"GET /?moat_token=%s HTTP/1.1\r\nHost: t\r\n\r\n" % token.encode(),
                    b"GET / HTTP/1.1\r\nHost: t\r\nx-moat-token:   %s  \r\n\r\n" % token.encode()):
        reply = tunnel_exchange(tunnel, request)
        assert reply.startswith(b"HTTP/1.1 502 ") and b"sandbox_unreachable" in reply, reply[:200]


@pytest.mark.parametrize("request_head", [
    b"GET / HTTP/1.1\r\nHost: t\r\nX-Moat-Token : TOKEN\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nX-Moat-Token-Extra: TOKEN\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nX-Other: 1\r\n X-Moat-Token: TOKEN\r\n\r\n",
    b"GET /?xmoat_token=TOKEN HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nX-Moat-Token: TOKEN\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nX-Moat-Token: %TOKEN\r\n\r\n",
], ids=["space-before-colon", "longer-name", "folded", "prefixed-param",
        "in-second-request", "percent-prefixed"])
def test_tunnel_token_in_the_wrong_place_is_refused(tunneled, request_head):
    """Attack: the right token where a lax parser would find it (a header
    name with a space or a suffix, a folded line, another parameter's name,
    the fragment, a pipelined second request). Bound: 401 unauthorized."""
    _, tunnel = tunneled
    reply = tunnel_exchange(tunnel, request_head.replace(b"TOKEN", tunnel.token.encode()))
    assert reply.startswith(b"HTTP/1.1 401 ") and b"unauthorized" in reply, reply[:200]


# --- cross-talk and connection reuse ----------------------------------------------------

def test_concurrent_pipelined_clients_get_only_their_own_replies(moatd, sandbox):
    """Attack: 12 clients at once, each pipelining runs that echo a marker
    unique to it, an error, and a read of its own exec, with writes split
    at random points so requests of different clients interleave in time.
    Bound: every client gets exactly its replies, in order, each marker in
    its own reply, within 60 s in all."""
    errors = []

    def client(index):
        try:
            marker = "marker-%d-%s" % (index, os.urandom(4).hex())
            run = "/v1/sandboxes/%s/run" % sandbox.id
            data = (request_bytes("POST", run, json.dumps({"cmd": "echo %s-a" % marker}))
                    + request_bytes("GET", "/v1/sandboxes/%s-no" % marker)
                    + request_bytes("POST", run, json.dumps({"argv": ["echo", marker + "-b"]}))
                    + request_bytes("GET", "/v1/health", close=True))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            sock.connect(moatd.socket)
            cut = len(data) // 3 + index
            for piece in (data[:cut], data[cut:2 * cut], data[2 * cut:]):
                sock.sendall(piece)
                time.sleep(0.01 * (index % 4))
            received = bytearray()
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            sock.close()
            responses, leftover = parse_responses(bytes(received), ["POST", "GET", "POST", "GET"])
            assert len(responses) == 4 and not leftover, received[:500]
            first, missing, second, health = responses
            assert first[0] == 200 and json.loads(first[2])["stdout"] == marker + "-a\n", first
            assert missing[0] == 404 and (marker + "-no").encode() in missing[2], missing
            assert second[0] == 200 and json.loads(second[2])["stdout"] == marker + "-b\n", second
            assert health[0] == 200
            assert b"marker-" not in received.replace(marker.encode(), b""), "another client's marker"
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append("client %d: %r" % (index, exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "clients still waiting after 60 s"
    assert not errors, errors
    assert time.monotonic() - start < 60


ERROR_THEN_REUSE = {
    "404": request_bytes("GET", "/v1/nothing"),
    "405": request_bytes("PATCH", "/v1/sandboxes", b""),
    "400-bad-json": request_bytes("POST", "/v1/sandboxes", b"{"),
    "400-bad-query": request_bytes("GET", "/v1/sandboxes?tag=%zz"),
    "413-json": request_bytes("POST", "/v1/sandboxes", b" " * (1024 * 1024 + 1)),
    "400-unknown-field": request_bytes("POST", "/v1/sandboxes", b'{"bogus": 1}'),
}


@pytest.mark.parametrize("name", sorted(ERROR_THEN_REUSE))
def test_connection_reused_after_an_error(moatd, name):
    """Attack: a keep-alive connection that receives an error and is reused.
    Bound: the next request is answered correctly (health 200, framed) or
    the connection was closed cleanly right after the error reply."""
    data, closed, _ = exchange(moatd.socket, ERROR_THEN_REUSE[name] + HEALTH_CLOSE)
    responses, leftover = parse_responses(data, ["X", "GET"])
    assert responses, data[:300]
    assert_json_error(*responses[0], statuses=(400, 404, 405, 413))
    if len(responses) == 1:
        assert closed and not leftover, data[:400]
    else:
        assert responses[1][0] == 200 and json.loads(responses[1][2])["ok"] is True
        assert closed and not leftover


# --- an idle half-open client is dropped (runs last: it waits out the I/O timeout) -------

@pytest.fixture(scope="module", autouse=True)
def idle_client(moatd):
    """Opened before the module's first test, so its 60 s run in parallel."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(moatd.socket)
    sock.sendall(b"POST /v1/sandboxes HTTP/1.1\r\nHost: moat\r\nContent-Length: 10\r\n\r\n{")
    opened = time.monotonic()
    yield sock, opened
    sock.close()


def test_idle_half_open_client_is_dropped(moatd, idle_client):
    """Attack: a client that sends half a request and then nothing. Bound:
    moatd closes it after its I/O timeout (API_IO_TIMEOUT_S = 60 s, + 15 s
    slack), without answering with a success."""
    sock, opened = idle_client
    sock.settimeout(max(1.0, opened + API_IO_TIMEOUT_S + 15 - time.monotonic()))
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pytest.fail("idle client still connected %.0f s after it stalled" % (time.monotonic() - opened))
    except ConnectionResetError:
        pass
    assert not data.startswith(b"HTTP/1.1 2"), data[:200]
