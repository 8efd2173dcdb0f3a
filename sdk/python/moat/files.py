"""Files of a running sandbox: ``sb.files.read/write/list/stat/...``.

Every path is absolute and resolved inside the sandbox (its own root, its
own symlinks). Uploads go in chunks of CHUNK bytes, each one request; the
file appears under its name only once the last chunk arrived. Reads stream:
:meth:`Files.open` returns a file-like object, and :meth:`Files.read` reads it
whole.
"""

import http.client
import io
import os
import socket
import tarfile
import uuid

from . import errors
from ._transport import build_path, _error_from_body

CHUNK = 4 * 1024 * 1024  # bytes per upload request (moatd accepts up to 8 MiB)


def _mode_text(mode):
    if mode is None:
        return None
    if isinstance(mode, int):
        return "%o" % mode
    return str(mode)


class FileInfo(dict):
    """A stat result: name, type ("file", "dir", "symlink", "other"), size,
    mode (octal string), uid, gid, mtime, symlink_target; ``path`` in lists."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def is_dir(self):
        return self.get("type") == "dir"

    @property
    def is_file(self):
        return self.get("type") == "file"


class ReadStream(io.RawIOBase):
    """A file's content as it streams from moatd (nothing read ahead)."""

    def __init__(self, conn, resp):
        super().__init__()
        self._conn = conn
        self._resp = resp

    def readable(self):
        return True

    def readinto(self, buffer):
        try:
            return self._resp.readinto(buffer)
        except (OSError, http.client.HTTPException) as exc:
            raise errors.Unavailable("file stream from moatd broke: %s" % exc) from None

    def close(self):
        if not self.closed:
            try:
                self._resp.close()
            finally:
                self._conn.close()
        super().close()


class Watch:
    """Events of a files watch (see Files.watch)."""

    def __init__(self, stream):
        self._stream = stream
        ready = stream.next_event()
        if not ready or ready.get("type") != "ready":
            stream.close()
            raise errors.InternalError("moatd's watch stream did not start with ready: %r" % (ready,))
        self.directories = ready.get("directories")

    def __iter__(self):
        return self

    def __next__(self):
        event = self._stream.next_event()
        if event is None or event.get("type") == "end":
            self.close()
            raise StopIteration
        return event

    def close(self):
        self._stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class Files:
    """The files API of one sandbox (``sb.files``)."""

    def __init__(self, client, sandbox_path):
        self._client = client
        self._base = sandbox_path + "/files"

    # --- reading -----------------------------------------------------------

    def _get_stream(self, route, query):
        conn, resp = self._client._open("GET", build_path(self._base + route, query))
        if resp.status >= 400:
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException):
                data = b""
            finally:
                conn.close()
            raise _error_from_body(resp.status, data)
        return conn, resp

    def open(self, path, offset=None, length=None):
        """A binary stream of the file's content (a context manager)."""
        conn, resp = self._get_stream("/content", {"path": path, "offset": offset, "length": length})
        return io.BufferedReader(ReadStream(conn, resp), buffer_size=1024 * 1024)

    def read(self, path, offset=None, length=None):
        """The file's content as bytes."""
        with self.open(path, offset, length) as stream:
            return stream.read()

    def read_text(self, path, encoding="utf-8", errors_mode="strict"):
        return self.read(path).decode(encoding, errors_mode)

    def download(self, path, local_path):
        """Copy the sandbox file to local_path, streamed."""
        with self.open(path) as stream, open(local_path, "wb") as out:
            while True:
                piece = stream.read(1024 * 1024)
                if not piece:
                    break
                out.write(piece)

    # --- writing -----------------------------------------------------------

    def write(self, path, data, mode=None, make_dirs=False, user=None, chunk_size=CHUNK):
        """Write data (bytes, str, or a binary file object) to path.

        The file replaces any existing one only once every byte arrived; a
        write that fills the sandbox's disk raises moat.LimitExceeded (code
        disk_full) and leaves nothing behind. Returns the size written."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        common = {"path": path, "mode": _mode_text(mode), "mkdirs": "1" if make_dirs else None, "user": user}
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = memoryview(data)
            if len(data) <= chunk_size:
                query = dict(common)
                self._client.request("PUT", self._base + "/content", raw_body=bytes(data), query=query)
                return len(data)

            def pieces():
                for start in range(0, len(data), chunk_size):
                    yield bytes(data[start:start + chunk_size])
        else:
            stream = data

            def pieces():
                while True:
                    piece = stream.read(chunk_size)
                    if not piece:
                        return
                    yield piece

        upload = uuid.uuid4().hex
        offset = 0
        iterator = iter(pieces())
        piece = next(iterator, b"")
        while True:
            following = next(iterator, None)
            query = dict(common, upload=upload, offset=offset, final="1" if following is None else "0")
            self._client.request("PUT", self._base + "/content", raw_body=piece, query=query)
            offset += len(piece)
            if following is None:
                return offset
            piece = following

    def upload(self, local_path, path, mode=None, make_dirs=False, user=None):
        with open(local_path, "rb") as f:
            return self.write(path, f, mode=mode, make_dirs=make_dirs, user=user)

    # --- metadata ----------------------------------------------------------

    def stat(self, path):
        return FileInfo(self._client.request("GET", self._base + "/stat", query={"path": path}))

    def exists(self, path):
        try:
            self.stat(path)
            return True
        except errors.NotFound:
            return False

    def list(self, path, depth=1):
        doc = self._client.request("GET", self._base + "/list", query={"path": path, "depth": depth})
        return [FileInfo(entry) for entry in doc.get("entries", [])]

    def mkdir(self, path, parents=True, mode=None, user=None):
        body = {"path": path, "parents": bool(parents)}
        if mode is not None:
            body["mode"] = _mode_text(mode)
        if user is not None:
            body["user"] = user
        self._client.request("POST", self._base + "/mkdir", json_body=body)

    def remove(self, path, recursive=False):
        self._client.request("POST", self._base + "/remove", json_body={"path": path, "recursive": bool(recursive)})

    def move(self, source, destination, overwrite=False):
        self._client.request("POST", self._base + "/move",
                             json_body={"from": source, "to": destination, "overwrite": bool(overwrite)})

    rename = move

    def chmod(self, path, mode):
        self._client.request("POST", self._base + "/chmod", json_body={"path": path, "mode": _mode_text(mode)})

    # --- watching --------------------------------------------------------------

    def watch(self, path, recursive=False):
        """Stream change events under the directory path (a context manager
        and an iterator of dicts: type create/modify/close_write/delete/
        move_from/move_to/chmod/overflow/warning, path, is_dir, cookie). It
        returns once the watches are in place; the iteration ends when the
        directory is deleted or the sandbox stops."""
        return Watch(self._client.stream(self._base + "/watch",
                                         {"path": path, "recursive": "1" if recursive else None}))

    # --- directories as tar streams -----------------------------------------

    def upload_dir(self, local_dir, path, user=None, batch_bytes=6 * 1024 * 1024):
        """Copy the local directory's contents beneath path (created if missing).

        moatd takes at most 8 MiB per request, so the tree goes as several tar
        batches of about batch_bytes each, in path order (a directory before
        what it holds); a file bigger than a batch goes through write()'s
        chunked upload instead."""
        entries = []
        for root, dirs, files in os.walk(local_dir):
            dirs.sort()
            relative = os.path.relpath(root, local_dir)
            for name in dirs + sorted(files):
                entries.append(os.path.normpath(os.path.join(relative, name)))
        entries.sort(key=lambda e: e.split(os.sep))
        batch, size = [], 0

        def send():
            if not batch:
                return
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in batch:
                    tar.add(os.path.join(local_dir, name), arcname=name, recursive=False)
            self._client.request("PUT", self._base + "/archive", raw_body=buffer.getvalue(),
                                 query={"path": path, "user": user})
            batch.clear()

        for name in entries:
            local = os.path.join(local_dir, name)
            length = os.lstat(local).st_size if os.path.isfile(local) and not os.path.islink(local) else 0
            if length > batch_bytes:
                send()
                size = 0
                with open(local, "rb") as data:
                    self.write(path.rstrip("/") + "/" + name.replace(os.sep, "/"), data,
                               mode=os.stat(local).st_mode & 0o7777, make_dirs=True, user=user)
                continue
            if size + length + 1024 > batch_bytes:
                send()
                size = 0
            batch.append(name)
            size += length + 1024
        send()
        if not entries:
            self.mkdir(path, parents=True, user=user)

    def download_dir(self, path, local_dir):
        """Copy the sandbox directory's contents into local_dir (streamed)."""
        conn, resp = self._get_stream("/archive", {"path": path})
        try:
            os.makedirs(local_dir, exist_ok=True)
            with tarfile.open(fileobj=resp, mode="r|") as tar:
                for member in tar:
                    # Only plain members, never outside local_dir.
                    if not (member.isfile() or member.isdir() or member.issym()):
                        continue
                    if hasattr(tarfile, "data_filter"):
                        tar.extract(member, local_dir, set_attrs=False, filter="data")
                    else:
                        _safe_extract(tar, member, local_dir)
        except (OSError, http.client.HTTPException, socket.timeout) as exc:
            raise errors.Unavailable("archive stream from moatd broke: %s" % exc) from None
        finally:
            resp.close()
            conn.close()


def _safe_extract(tar, member, local_dir):
    target = os.path.realpath(os.path.join(local_dir, member.name))
    root = os.path.realpath(local_dir)
    if target != root and not target.startswith(root + os.sep):
        raise errors.InvalidArgument("archive member %r leaves %s" % (member.name, local_dir))
    if member.issym():
        return  # symlinks need the data filter's checks; skipped on old Pythons
    tar.extract(member, local_dir, set_attrs=False)
