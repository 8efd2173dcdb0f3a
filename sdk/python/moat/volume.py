"""Volumes: named, persistent, size-limited filesystems that outlive sandboxes.

    vol = moat.Volume.from_name("cache", create_if_missing=True, size_mib=512)
    vol.write_file("/config.json", b"{}")
    with moat.Sandbox.create(volumes={"/data": vol}) as sb:
        sb.run("ls /data")

A volume's ``size_mib`` is a cap, not a reservation: the disk image is sparse.
Mount it read-only with ``volumes={"/data": vol.read_only()}``.
"""

import http.client
import socket as _socket
import urllib.parse

from . import errors
from ._transport import Client, _error_from_body, build_path


def _name_part(name):
    return urllib.parse.quote(name, safe="")


class Volume:
    """A handle on one volume. Files are read and written without a sandbox."""

    def __init__(self, client, info, read_only=False):
        self._client = client
        self._info = info
        self._read_only = read_only

    def __repr__(self):
        return "Volume(%r, size_mib=%r)" % (self.name, self.size_mib)

    @property
    def name(self):
        return self._info["name"]

    @property
    def size_mib(self):
        return self._info.get("size_mib")

    @property
    def used_bytes(self):
        return self._info.get("used_bytes")

    @property
    def info(self):
        return dict(self._info)

    def read_only(self):
        """The same volume, to be mounted read-only by ``Sandbox.create``."""
        return Volume(self._client, self._info, read_only=True)

    def mount_body(self):
        """The create body's value for this volume."""
        if self._read_only:
            return {"name": self.name, "read_only": True}
        return self.name

    # --- the registry -------------------------------------------------------

    @classmethod
    def create(cls, name, size_mib=None, socket=None):
        """Make a new volume (raises moat.Conflict if the name is taken)."""
        body = {"name": name}
        if size_mib is not None:
            body["size_mib"] = size_mib
        client = Client(socket)
        return cls(client, client.request("POST", "/v1/volumes", json_body=body))

    @classmethod
    def from_name(cls, name, create_if_missing=False, size_mib=None, socket=None):
        """The volume called ``name``; made first if ``create_if_missing``."""
        client = Client(socket)
        try:
            return cls(client, client.request("GET", "/v1/volumes/%s" % _name_part(name)))
        except errors.NotFound:
            if not create_if_missing:
                raise
        try:
            return cls.create(name, size_mib=size_mib, socket=socket)
        except errors.Conflict:  # made meanwhile by someone else
            return cls(client, client.request("GET", "/v1/volumes/%s" % _name_part(name)))

    @classmethod
    def list(cls, socket=None):
        client = Client(socket)
        return [cls(client, info) for info in client.request("GET", "/v1/volumes").get("volumes", [])]

    @classmethod
    def delete(cls, name, socket=None):
        """Remove the volume and its data (moat.Conflict while a sandbox mounts it)."""
        if isinstance(name, Volume):
            name = name.name
        Client(socket).request("DELETE", "/v1/volumes/%s" % _name_part(name))

    def refresh(self):
        self._info = self._client.request("GET", self._path())
        return self

    def _path(self):
        return "/v1/volumes/%s" % _name_part(self.name)

    # --- files --------------------------------------------------------------

    def read_file(self, path):
        """The bytes of the file at ``path`` (absolute, inside the volume)."""
        conn, resp = self._client._open("GET", build_path(self._path() + "/files/content", {"path": path}))
        try:
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException, _socket.timeout) as exc:
                raise errors.Unavailable("connection to moatd lost reading %s: %s" % (path, exc)) from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise _error_from_body(resp.status, data)
        return data

    def write_file(self, path, data):
        """Replace the file at ``path`` with ``data`` (bytes or str; at most 8 MiB).
        Atomic: readers see the old file or the new one."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        return self._client.request("PUT", self._path() + "/files/content", raw_body=bytes(data),
                                    query={"path": path})

    def listdir(self, path="/"):
        """Entries of the directory at ``path``: dicts with name, type, size,
        mode, uid, gid, mtime (and link_target for symlinks)."""
        return self._client.request("GET", self._path() + "/files/list", query={"path": path})["entries"]

    def remove(self, path, recursive=False):
        self._client.request("POST", self._path() + "/files/remove",
                             json_body={"path": path, "recursive": bool(recursive)})


def volumes_body(volumes):
    """{"/data": Volume | "name"} -> the create body's "volumes"."""
    body = {}
    for target, volume in dict(volumes).items():
        if isinstance(volume, Volume):
            body[target] = volume.mount_body()
        elif isinstance(volume, str):
            body[target] = volume
        else:
            raise TypeError("volumes values must be moat.Volume or a volume name")
    return body
