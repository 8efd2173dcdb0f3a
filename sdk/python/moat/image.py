"""Images: the store of layered root filesystems sandboxes start from.

    img = moat.Image.pull("debian:bookworm-slim", progress=print)
    with moat.Sandbox.create(image=img) as sb:
        ...
    snap = sb.snapshot_filesystem(name="myapp:v1")

An image is an ordered list of content-addressed, read-only layers plus a
config (env, workdir, user, entrypoint, cmd). Names look like registry
references ("debian:bookworm-slim", "127.0.0.1:5000/team/app:v2"); ids
("img-...") work wherever a name does.
"""

import http.client
import json
import socket as _socket
import urllib.parse

from . import errors
from ._transport import Client, _error_from_body


def image_path(ref, suffix=""):
    """/v1/images/<ref>: the ref %-encoded, since names hold ':' and '/'
    and must never change the route."""
    if not isinstance(ref, str) or not ref:
        raise errors.InvalidArgument("not an image reference: %r" % (ref,))
    return "/v1/images/%s%s" % (urllib.parse.quote(ref, safe=""), suffix)


class Image:
    """One image as moatd last described it."""

    def __init__(self, client, info):
        self._client = client
        self._info = dict(info)

    # --- attributes ------------------------------------------------------------

    id = property(lambda self: self._info.get("id"))
    name = property(lambda self: self._info.get("name"))
    names = property(lambda self: list(self._info.get("names") or []))
    layers = property(lambda self: list(self._info.get("layers") or []))
    config = property(lambda self: dict(self._info.get("config") or {}))
    size = property(lambda self: self._info.get("size"))
    created_at = property(lambda self: self._info.get("created_at"))
    parent = property(lambda self: self._info.get("parent"))
    in_use = property(lambda self: bool(self._info.get("in_use")))
    # Only on an image a snapshot just made: how long moatd took, in ms.
    snapshot_ms = property(lambda self: self._info.get("snapshot_ms"))

    @property
    def info(self):
        """The last image object seen from the server, as a dict."""
        return dict(self._info)

    def __repr__(self):
        return "<moat.Image %s %s>" % (self.id, self.name or "<none>")

    def __eq__(self, other):
        return isinstance(other, Image) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    # --- the store -------------------------------------------------------------

    @classmethod
    def from_name(cls, ref, socket=None):
        """The image named ``ref`` (or with id ``ref``); raises moat.NotFound."""
        client = Client(socket)
        return cls(client, client.request("GET", image_path(ref)))

    @classmethod
    def list(cls, socket=None):
        """Every image in the store (the built-in ``host`` one included)."""
        client = Client(socket)
        doc = client.request("GET", "/v1/images")
        return [cls(client, info) for info in doc.get("images", [])]

    @classmethod
    def disk_usage(cls, socket=None):
        """{"layers": count, "bytes": total} of the store's layers."""
        return dict(Client(socket).request("GET", "/v1/images").get("disk_usage") or {})

    @classmethod
    def prune(cls, socket=None):
        """Remove images without a name and layers no image uses (never one a
        sandbox uses). Returns {"images_removed", "layers_removed", "bytes_freed"}."""
        return dict(Client(socket).request("POST", "/v1/images/prune"))

    @classmethod
    def import_directory(cls, path, name, socket=None):
        """Copy a root filesystem directory on moatd's host into the store as
        one layer, named ``name``."""
        client = Client(socket)
        return cls(client, client.request("POST", "/v1/images/import",
                                          json_body={"path": path, "name": name}))

    @classmethod
    def pull(cls, ref, name=None, progress=None, username=None, password=None, socket=None,
             timeout=None):
        """Pull ``ref`` into the store, named ``name`` (default: ``ref``);
        returns the Image. ``ref`` is "debian:<release>[-slim]" (built with
        debootstrap) or a registry reference ("host[:port]/repo:tag",
        "...@sha256:..."); ``username``/``password`` authenticate to the
        registry.

        ``progress``, if given, is called with each progress line (a str) as
        moatd streams it: the first build of a Debian base runs debootstrap
        for minutes. Raises moat errors (InvalidArgument for an unsupported
        reference, ...) whether moatd refuses at once or fails mid-way.
        """
        body = {"ref": ref}
        if name is not None:
            body["name"] = name
        if username is not None:
            body["username"] = username
        if password is not None:
            body["password"] = password
        client = Client(socket)
        data = json.dumps(body).encode("utf-8")
        conn, resp = client._open("POST", "/v1/images/pull", data,
                                  {"Content-Type": "application/json"}, timeout)
        try:
            if resp.status >= 400:
                raise _error_from_body(resp.status, _read_all(resp))
            for event in _events(resp):
                if isinstance(event.get("progress"), str):
                    if progress is not None:
                        progress(event["progress"])
                elif isinstance(event.get("image"), dict):
                    return cls(client, event["image"])
                elif isinstance(event.get("error"), dict):
                    err = event["error"]
                    code = err.get("code") if isinstance(err.get("code"), str) else None
                    message = err.get("message") if isinstance(err.get("message"), str) else None
                    # The status line (200) was sent before the failure: map
                    # by code, and unknown codes as a server-side failure.
                    raise errors.error_from_response(500, code, message)
                # Other events are ignored, so the server may add kinds.
            raise errors.Unavailable("the pull stream of %s ended before the image "
                                     "(did moatd stop?)" % ref)
        finally:
            conn.close()

    def refresh(self):
        """Fetch the image's current state (names, in_use) from moatd."""
        self._info = dict(self._client.request("GET", image_path(self.id)))
        return self

    def delete(self):
        """Remove the image: every name of it, then the image and its layers
        that no other image shares. Raises moat.Conflict (code image_in_use)
        while a sandbox uses it, moat.NotFound if it is already gone."""
        self._client.request("DELETE", image_path(self.id))


# An event line is a progress or log line, or one image object: far below this.
_MAX_LINE = 16 * 1024 * 1024


def _events(resp):
    """Decoded NDJSON events of a streamed response (pull, build), one per line."""
    while True:
        try:
            line = resp.readline(_MAX_LINE)
        except _socket.timeout:
            raise errors.Timeout("moatd sent no event in time") from None
        except (OSError, http.client.HTTPException) as exc:
            raise errors.Unavailable("event stream from moatd broke: %s" % exc) from None
        if not line:
            return
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            raise errors.InternalError("moatd sent a malformed event: %r" % line[:200]) from None
        if isinstance(event, dict):
            yield event


def _read_all(resp):
    try:
        return resp.read()
    except (OSError, http.client.HTTPException):
        return b""


def image_ref(image):
    """What Sandbox.create sends as "image": an Image's id, or the str given."""
    if isinstance(image, Image):
        return image.id
    return image
