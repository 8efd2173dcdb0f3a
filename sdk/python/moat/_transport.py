"""HTTP/1.1 over moatd's unix socket, with errors mapped to moat exceptions.

One connection per request: connecting to a unix socket costs microseconds,
and it keeps the client free of shared mutable state, so sandboxes and
processes can be used from several threads at once. Streams hold their own
connection for as long as they are read.
"""

import base64
import http.client
import json
import os
import socket
import urllib.parse

from . import errors

DEFAULT_SOCKET = "/run/moat/moatd.sock"


def resolve_socket_path(path=None):
    """The socket to use: the argument, then $MOAT_SOCKET, then the default."""
    return path or os.environ.get("MOAT_SOCKET") or DEFAULT_SOCKET


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection whose transport is a unix stream socket."""

    def __init__(self, socket_path, timeout=None):
        # The host only fills the Host header; moatd ignores it.
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.timeout is not None:
                sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _unavailable(socket_path, exc):
    return errors.Unavailable(
        "cannot reach moatd at %s: %s (is moatd running? socket %s; set MOAT_SOCKET or "
        "pass socket=...)" % (socket_path, exc.strerror or exc, socket_path))


def _error_from_body(status, body):
    code = message = None
    try:
        doc = json.loads(body.decode("utf-8", "replace"))
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            code = err.get("code") if isinstance(err.get("code"), str) else None
            message = err.get("message") if isinstance(err.get("message"), str) else None
    except ValueError:
        message = body[:200].decode("utf-8", "replace") or None
    return errors.error_from_response(status, code, message)


def build_path(path, query=None):
    """Append query parameters; a list value repeats the key (?tag=a=1&tag=b=2)."""
    if not query:
        return path
    parts = []
    for key, value in query.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool):
                v = "true" if v else "false"
            parts.append("%s=%s" % (urllib.parse.quote(key, safe=""),
                                    urllib.parse.quote(str(v), safe="=")))
    return path + ("?" + "&".join(parts) if parts else "")


class Client:
    """Talks to one moatd. Cheap to create; holds no connection between calls."""

    def __init__(self, socket_path=None, timeout=None):
        self.socket_path = resolve_socket_path(socket_path)
        self.timeout = timeout

    def _open(self, method, path, body=None, headers=None, timeout=None):
        """Send a request, return (connection, response). Maps transport errors."""
        conn = UnixHTTPConnection(self.socket_path, timeout=timeout if timeout is not None else self.timeout)
        hdrs = {}
        if body is not None:
            hdrs["Content-Length"] = str(len(body))
        if headers:
            hdrs.update(headers)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            conn.close()
            raise _unavailable(self.socket_path, exc) from None
        except socket.timeout:
            conn.close()
            raise errors.Timeout("moatd did not answer %s %s in time" % (method, path)) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise errors.Unavailable("connection to moatd at %s failed during %s %s: %s"
                                     % (self.socket_path, method, path, exc)) from None
        return conn, resp

    def request(self, method, path, json_body=None, raw_body=None, query=None, timeout=None):
        """One request; returns the decoded JSON body, raises moat.Error on failure."""
        body = None
        headers = {}
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        elif raw_body is not None:
            body = raw_body
            headers["Content-Type"] = "application/octet-stream"
        elif method in ("POST", "PUT"):
            body = b""
        conn, resp = self._open(method, build_path(path, query), body, headers, timeout)
        try:
            try:
                data = resp.read()
            except socket.timeout:
                raise errors.Timeout("moatd did not answer %s %s in time" % (method, path)) from None
            except (OSError, http.client.HTTPException) as exc:
                raise errors.Unavailable("connection to moatd lost during %s %s: %s"
                                         % (method, path, exc)) from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise _error_from_body(resp.status, data)
        if not data:
            return {}
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError:
            raise errors.InternalError("moatd sent a response that is not JSON for %s %s"
                                       % (method, path), status=resp.status) from None

    def stream(self, path, query=None):
        """Open an NDJSON stream: returns an EventStream yielding decoded events."""
        conn, resp = self._open("GET", build_path(path, query))
        if resp.status >= 400:
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException):
                data = b""
            finally:
                conn.close()
            raise _error_from_body(resp.status, data)
        return EventStream(conn, resp)


class EventStream:
    """Newline-delimited JSON events read one line at a time from a chunked body.

    Nothing is read ahead beyond what http.client buffers, so a slow consumer
    slows the server (backpressure) instead of growing this process.
    """

    # An event line carries at most one output chunk, base64; far below this.
    MAX_LINE = 64 * 1024 * 1024

    def __init__(self, conn, resp):
        self._conn = conn
        self._resp = resp
        self.closed = False

    def next_event(self):
        """The next event as a dict, or None at the end of the stream."""
        if self.closed:
            return None
        while True:
            try:
                line = self._resp.readline(self.MAX_LINE)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise errors.Unavailable("output stream from moatd broke: %s" % exc) from None
            if not line:
                self.close()
                return None
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                self.close()
                raise errors.InternalError("moatd sent a malformed stream event: %r" % line[:200]) from None
            if isinstance(event, dict) and "error" in event and isinstance(event["error"], dict):
                self.close()
                err = event["error"]
                raise errors.error_from_response(500, err.get("code"), err.get("message"))
            return event

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self._resp.close()
            finally:
                self._conn.close()


def decode_data(event):
    """The bytes of an output event."""
    data = event.get("data")
    if not data:
        return b""
    return base64.b64decode(data)
