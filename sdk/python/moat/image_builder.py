"""Build images from Python: a chain of steps moatd runs and caches.

    spec = (moat.Image.debian(release="bookworm", slim=True)
            .apt_install("git", "curl")
            .copy_local_file("app.py", "/srv/app.py")
            .env({"PORT": "8080"})
            .workdir("/srv")
            .run_commands("python3 -m compileall ."))
    img = spec.build("myapp:1", on_log=lambda step, line: print(step, line))
    with moat.Sandbox.create(image=img) as sb:
        ...

Every method returns a new ImageSpec (the old one is unchanged), so a common
base can branch. ``build`` sends the spec to POST /v1/images/build with a tar
of the local files the copy steps name; moatd runs each step in a build
sandbox (internet egress, for package mirrors) and caches it by the hash of
the previous step, the step and the content it copies: rebuilding an
unchanged spec runs nothing, and changing the last step reruns only that one.

The uploaded files are owned by root (uid/gid 0) in the image and keep their
modes. Their times are written as 0 and entries are sorted, so the same
files always make the same upload; moatd's cache key depends on paths,
types, modes and contents only, so touching a file never invalidates a step.
Symlinks inside a copied directory are copied as symlinks (never followed);
the upload is at most 6 MiB (moatd's limit): bigger data belongs in a RUN
step that downloads it, or in a volume.
"""

import base64
import copy as _copy
import io
import json
import os
import stat
import tarfile

from . import errors
from ._transport import Client, _error_from_body
from .image import _events, _read_all

# moatd's bounds (src/daemon/image_build.c).
MAX_STEPS = 50
MAX_CONTEXT_BYTES = 6 * 1024 * 1024


class BuildError(errors.Error):
    """A build step failed (its command exited non-zero, a copy was refused,
    ...). ``step`` is the index of the failing step (-1: before any step)."""

    default_code = "build_failed"

    def __init__(self, message="", code=None, status=None, step=None):
        super().__init__(message, code=code, status=status)
        self.step = step


def _image_ref(image):
    ref = getattr(image, "id", None) or image
    if not isinstance(ref, str) or not ref:
        raise errors.InvalidArgument("not an image reference: %r" % (image,))
    return ref


def _strings(values, what):
    flat = []
    for value in values:
        if isinstance(value, (list, tuple)):
            flat.extend(value)
        else:
            flat.append(value)
    if not flat or not all(isinstance(v, str) and v for v in flat):
        raise errors.InvalidArgument("%s: give one or more non-empty strings" % what)
    return flat


def _absolute(path, what):
    if not isinstance(path, str) or not path.startswith("/"):
        raise errors.InvalidArgument("%s must be an absolute path in the image, not %r" % (what, path))
    return path


class ImageSpec:
    """An image to build: a base and a list of steps (see the module doc)."""

    def __init__(self, base):
        self._from = _image_ref(base)
        self._steps = []
        # For each copy step: (context directory name, local path, is_dir).
        self._uploads = []

    # --- bases -------------------------------------------------------------

    @classmethod
    def debian(cls, release="bookworm", slim=True):
        """A Debian base ("debian:bookworm-slim"); moatd builds it with
        debootstrap on first use and keeps it."""
        if not isinstance(release, str) or not release.isalnum():
            raise errors.InvalidArgument("not a Debian release name: %r" % (release,))
        return cls("debian:%s%s" % (release, "-slim" if slim else ""))

    @classmethod
    def from_image(cls, ref):
        """Start from an image of the store: a name, an ``img-...`` id, an
        Image, or "host"."""
        return cls(ref)

    # --- steps -------------------------------------------------------------

    def _with(self, step, upload=None):
        if len(self._steps) >= MAX_STEPS:
            raise errors.InvalidArgument("an image spec has at most %d steps" % MAX_STEPS)
        spec = _copy.copy(self)
        spec._steps = self._steps + [step]
        spec._uploads = self._uploads + ([upload] if upload else [])
        return spec

    def apt_install(self, *packages):
        """apt-get install these Debian packages (as root, whatever the user)."""
        return self._with({"apt_install": _strings(packages, "apt_install")})

    def run_commands(self, *commands):
        """Shell commands (``sh -c``), run in order in one step; the first
        that fails fails the build."""
        commands = _strings(commands, "run_commands")
        return self._with({"run": commands[0] if len(commands) == 1 else commands})

    def copy_local_file(self, local_path, remote_path):
        """A file of this machine to ``remote_path`` in the image (into it,
        keeping the file's name, when it ends with "/")."""
        if not os.path.isfile(local_path):
            raise errors.InvalidArgument("copy_local_file: %r is not a file" % (local_path,))
        _absolute(remote_path, "copy_local_file's remote_path")
        name = os.path.basename(local_path)
        if remote_path.endswith("/"):
            remote_path += name
        # One context directory per copy: moatd's cache key for the step then
        # covers exactly this file.
        directory = str(len(self._uploads))
        return self._with({"copy": {"src": "%s/%s" % (directory, name), "dest": remote_path}},
                          (directory, os.path.abspath(local_path), False))

    def copy_local_dir(self, local_path, remote_path):
        """The contents of a local directory into ``remote_path`` (made if
        missing)."""
        if not os.path.isdir(local_path):
            raise errors.InvalidArgument("copy_local_dir: %r is not a directory" % (local_path,))
        _absolute(remote_path, "copy_local_dir's remote_path")
        directory = str(len(self._uploads))
        return self._with({"copy": {"src": directory, "dest": remote_path}},
                          (directory, os.path.abspath(local_path), True))

    def env(self, variables):
        """Environment variables for later steps and the image's sandboxes."""
        if not isinstance(variables, dict) or not variables or \
                not all(isinstance(k, str) and isinstance(v, str) for k, v in variables.items()):
            raise errors.InvalidArgument("env takes a non-empty dict of str to str")
        return self._with({"env": dict(variables)})

    def workdir(self, path):
        """The working directory of later steps and of the image's sandboxes."""
        return self._with({"workdir": _absolute(path, "workdir")})

    def user(self, name):
        """The user (a name or uid[:gid]) later steps and sandboxes run as."""
        if not isinstance(name, str) or not name:
            raise errors.InvalidArgument("user takes a user name or uid[:gid]")
        return self._with({"user": name})

    # --- building ----------------------------------------------------------

    @property
    def steps(self):
        return _copy.deepcopy(self._steps)

    def to_json(self):
        """The spec moatd receives, without the context."""
        return {"from": self._from, "steps": self.steps}

    def context_tar(self):
        """The tar (bytes) of the local files the copy steps name, or None."""
        if not self._uploads:
            return None
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for directory, local, is_dir in self._uploads:
                tar.addfile(_tar_info(directory, None, tarfile.DIRTYPE))
                if is_dir:
                    _add_tree(tar, local, directory)
                else:
                    _add_path(tar, local, "%s/%s" % (directory, os.path.basename(local)))
                if buffer.tell() > MAX_CONTEXT_BYTES:
                    break
        data = buffer.getvalue()
        if len(data) > MAX_CONTEXT_BYTES:
            raise errors.PayloadTooLarge("the files to copy make a %d-byte upload; moatd takes at most %d "
                                         "(download big data in a run step instead)"
                                         % (len(data), MAX_CONTEXT_BYTES))
        return data

    def build(self, name, client=None, on_log=None, on_step=None, socket=None, timeout=None):
        """Build the image and name it ``name``; returns the moat.Image.

        ``on_log(step, line)`` gets each output line of run/apt_install
        steps, ``on_step(step, kind, cached)`` each step as it starts
        (``cached`` True when moatd reused an earlier result). Raises
        BuildError (with ``.step``) when a step fails, other moat errors
        (InvalidArgument for a bad spec or name) otherwise.
        """
        if not isinstance(name, str) or not name:
            raise errors.InvalidArgument("build needs an image name, e.g. \"myapp:1\"")
        client = client or Client(socket)
        body = self.to_json()
        body["name"] = name
        tar = self.context_tar()
        if tar is not None:
            body["context"] = base64.b64encode(tar).decode("ascii")
        data = json.dumps(body).encode("utf-8")
        conn, resp = client._open("POST", "/v1/images/build", data,
                                  {"Content-Type": "application/json"}, timeout)
        try:
            if resp.status >= 400:
                raise _error_from_body(resp.status, _read_all(resp))
            failure = None
            for event in _events(resp):
                step = event.get("step")
                if failure is not None:
                    continue  # after the error: moatd ends the stream once it has cleaned up
                if isinstance(event.get("error"), dict):
                    failure = _build_error(event["error"], step, self._steps)
                if isinstance(event.get("log"), str):
                    if on_log is not None:
                        on_log(step, event["log"])
                elif "cached" in event and isinstance(step, int):
                    if on_step is not None:
                        on_step(step, event.get("kind"), bool(event["cached"]))
                elif step is None and isinstance(event.get("image"), dict):
                    from .image import Image
                    return Image(client, event["image"])
                # Step ends, progress, and kinds added later: nothing to do.
            if failure is not None:
                raise failure
            raise errors.Unavailable("the build stream of %s ended before the image (did moatd stop?)" % name)
        finally:
            conn.close()

    def __repr__(self):
        return "<moat.ImageSpec from %s, %d steps>" % (self._from, len(self._steps))


def _tar_info(path, st, kind):
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode) if st is not None else 0o755
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _add_path(tar, local, arcname):
    """One file system entry, never following a symlink."""
    st = os.lstat(local)
    if stat.S_ISDIR(st.st_mode):
        tar.addfile(_tar_info(arcname, st, tarfile.DIRTYPE))
    elif stat.S_ISLNK(st.st_mode):
        info = _tar_info(arcname, st, tarfile.SYMTYPE)
        info.linkname = os.readlink(local)
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info = _tar_info(arcname, st, tarfile.REGTYPE)
        with open(local, "rb") as f:
            content = f.read(MAX_CONTEXT_BYTES + 1)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    # Devices, fifos, sockets: not files an image is built from; skipped.


def _add_tree(tar, root, arcroot):
    """Everything under root, sorted, as arcroot/..."""
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()  # os.walk follows this order; it never follows links
        relative = os.path.relpath(directory, root)
        base = arcroot if relative == "." else "%s/%s" % (arcroot, relative.replace(os.sep, "/"))
        if relative != ".":
            _add_path(tar, directory, base)
        for name in sorted(files + [d for d in subdirs if os.path.islink(os.path.join(directory, d))]):
            _add_path(tar, os.path.join(directory, name), "%s/%s" % (base, name))
        # Symlinked directories were added as links above; do not descend.
        subdirs[:] = [d for d in subdirs if not os.path.islink(os.path.join(directory, d))]


def _build_error(err, step, steps):
    code = err.get("code") if isinstance(err.get("code"), str) else None
    message = err.get("message") if isinstance(err.get("message"), str) else "the build failed"
    if isinstance(step, int) and 0 <= step < len(steps):
        message = "step %d (%s): %s" % (step, next(iter(steps[step])), message)
    cls = errors._BY_CODE.get(code)
    if cls is None:
        return BuildError(message, code=code, status=500, step=step)
    exc = cls(message, code=code, status=500)
    exc.step = step
    return exc


def attach_to(image_class):
    """Give image_class (moat.Image) the builder's entry points:
    ``Image.debian(...)``, ``Image.from_image(ref)``, and on an Image
    instance the step methods, which start a spec from that image
    (``moat.Image.from_name("base:1").apt_install("jq").build("x:1")``).
    Methods the class already has are left alone."""
    if not hasattr(image_class, "debian"):
        image_class.debian = staticmethod(ImageSpec.debian)
    if not hasattr(image_class, "from_image"):
        image_class.from_image = staticmethod(ImageSpec.from_image)

    def starter(method):
        def start(self, *args, **kwargs):
            return getattr(ImageSpec.from_image(self.id), method)(*args, **kwargs)
        start.__name__ = method
        start.__doc__ = "ImageSpec.from_image(this image).%s(...)" % method
        return start

    for method in ("apt_install", "run_commands", "copy_local_file", "copy_local_dir"):
        if not hasattr(image_class, method):
            setattr(image_class, method, starter(method))
