"""Sandboxes: create, inspect, run processes in, wait for and terminate."""

import base64
import time

from . import errors
from ._transport import Client
from .image import Image, image_ref
from .network import Network, Tunnel, network_body, ports_body
from .process import Process, _WAIT_SLICE
from .volume import volumes_body


class CommandResult:
    """What ``Sandbox.run`` returns: the output and the exit of one command."""

    def __init__(self, doc):
        self.exit_code = doc.get("exit_code")
        self.signal = doc.get("signal")
        self.timed_out = bool(doc.get("timed_out"))
        self.oom_killed = bool(doc.get("oom_killed"))
        self.stdout_bytes = _output_bytes(doc, "stdout")
        self.stderr_bytes = _output_bytes(doc, "stderr")
        self.stdout = self.stdout_bytes.decode("utf-8", "replace")
        self.stderr = self.stderr_bytes.decode("utf-8", "replace")

    @property
    def returncode(self):
        return self.exit_code

    @property
    def ok(self):
        return self.exit_code == 0

    def __repr__(self):
        return "CommandResult(exit_code=%r, stdout=%r, stderr=%r)" % (
            self.exit_code, self.stdout[:80], self.stderr[:80])


def _output_bytes(doc, name):
    text = doc.get(name)
    if text is not None:
        return text.encode("utf-8")
    encoded = doc.get(name + "_base64")
    return base64.b64decode(encoded) if encoded else b""


def _exec_body(argv, timeout, env, workdir, user):
    body = {} if argv is None else {"argv": list(argv)}
    if timeout is not None:
        body["timeout"] = timeout
    if env is not None:
        body["env"] = dict(env)
    if workdir is not None:
        body["workdir"] = workdir
    if user is not None:
        body["user"] = user
    return body


def _argv_from(args):
    # exec("ls", "-l") and exec(["ls", "-l"]) both work.
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = tuple(args[0])
    if not args:
        raise errors.InvalidArgument("a command needs at least argv[0]")
    for arg in args:
        if not isinstance(arg, str):
            raise errors.InvalidArgument("argv entries must be str, got %s" % type(arg).__name__)
    return list(args)


class Sandbox:
    """An isolated Linux environment managed by moatd.

    Create one with :meth:`Sandbox.create`; use it as a context manager to
    terminate it on exit.
    """

    def __init__(self, client, info):
        self._client = client
        self._info = dict(info)
        self.id = info["id"]
        self._entrypoint = None

    # --- lifecycle ---------------------------------------------------------

    @classmethod
    def create(cls, *entrypoint, image="host", cpu=None, memory=None, disk=None, pids=None,
               timeout=None, idle_timeout=None, env=None, workdir=None, user=None, tags=None,
               socket=None, network=None, ports=None, volumes=None):
        """Create a sandbox. Positional arguments, if any, are its entrypoint:
        the sandbox's main process, whose output is ``sb.stdout``/``sb.stderr``
        and whose exit ends the sandbox (``sb.wait()``, ``sb.returncode``).

        ``network`` is a :class:`moat.Network` (or "none"/"internet"; default
        none: loopback only); ``ports`` lists sandbox ports to expose, as ints
        or :class:`moat.Port` (see :meth:`tunnels`). ``image`` is a name, an
        id or a :class:`moat.Image`. ``volumes`` maps mount paths to
        :class:`moat.Volume` (``vol.read_only()`` to mount it read-only) or
        volume names: ``volumes={"/data": vol}``."""
        body = {}
        if image is not None:
            body["image"] = image_ref(image)
        for key, value in (("cpu", cpu), ("memory", memory), ("disk", disk), ("pids", pids),
                           ("timeout", timeout), ("idle_timeout", idle_timeout),
                           ("workdir", workdir), ("user", user)):
            if value is not None:
                body[key] = value
        if env is not None:
            body["env"] = dict(env)
        if tags is not None:
            body["tags"] = dict(tags)
        if entrypoint:
            body["entrypoint"] = _argv_from(entrypoint)
        if network is not None:
            body["network"] = network_body(network)
        if ports is not None:
            body["ports"] = ports_body(ports)
        if volumes:
            body["volumes"] = volumes_body(volumes)
        client = Client(socket)
        info = client.request("POST", "/v1/sandboxes", json_body=body)
        return cls(client, info)

    @classmethod
    def from_id(cls, sandbox_id, socket=None):
        """Attach to an existing sandbox."""
        client = Client(socket)
        return cls(client, client.request("GET", "/v1/sandboxes/%s" % _id_part(sandbox_id)))

    @classmethod
    def list(cls, tags=None, state=None, socket=None):
        """Sandboxes whose tags include all of ``tags`` (and in ``state``)."""
        client = Client(socket)
        query = {}
        if tags:
            query["tag"] = ["%s=%s" % (k, v) for k, v in tags.items()]
        if state:
            query["state"] = state
        doc = client.request("GET", "/v1/sandboxes", query=query)
        return [cls(client, info) for info in doc.get("sandboxes", [])]

    def terminate(self):
        """Kill everything in the sandbox and remove it. Idempotent."""
        try:
            self._client.request("DELETE", self._path())
        except errors.NotFound:
            pass
        self._info["state"] = "stopped"
        if not self._info.get("end_reason"):
            self._info["end_reason"] = "terminated"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.terminate()
        return False

    def __repr__(self):
        return "<moat.Sandbox %s %s>" % (self.id, self.state)

    # --- state -------------------------------------------------------------

    def _path(self, suffix=""):
        return "/v1/sandboxes/%s%s" % (_id_part(self.id), suffix)

    def refresh(self):
        """Fetch the sandbox's current state from moatd."""
        self._info = dict(self._client.request("GET", self._path()))
        return self

    @property
    def info(self):
        """The last sandbox object seen from the server, as a dict."""
        return dict(self._info)

    state = property(lambda self: self._info.get("state"))
    end_reason = property(lambda self: self._info.get("end_reason"))
    exit_code = property(lambda self: self._info.get("exit_code"))
    returncode = exit_code
    tags = property(lambda self: dict(self._info.get("tags") or {}))
    image = property(lambda self: self._info.get("image"))
    created_at = property(lambda self: self._info.get("created_at"))
    ended_at = property(lambda self: self._info.get("ended_at"))
    expires_at = property(lambda self: self._info.get("expires_at"))

    @property
    def files(self):
        """The sandbox's files API (moat.files.Files): read, write, list, ..."""
        from .files import Files
        return Files(self._client, self._path())

    @property
    def network(self):
        """The sandbox's network policy as moatd normalized it (a moat.Network)."""
        return Network.from_json(self._info.get("network"))

    def set_network(self, network):
        """Replace the network policy of the running sandbox, atomically.

        New connections follow the new policy. Raises moat.SandboxNotRunning
        if the sandbox has stopped, moat.InvalidArgument for a bad policy.
        """
        self._info = dict(self._client.request("PUT", self._path("/network"),
                                               json_body=network_body(network)))
        return self

    def tunnels(self):
        """Exposed ports: {sandbox port: moat.Tunnel(port, url, token, public, host_port)}."""
        self.refresh()
        return {doc["port"]: Tunnel.from_json(doc) for doc in self._info.get("tunnels") or []}

    def metrics(self):
        """Resource and traffic counters: cpu_seconds, memory_bytes,
        memory_peak_bytes, pids, net_rx_bytes/net_tx_bytes and
        tunnel_rx_bytes/tunnel_tx_bytes (from the sandbox's point of view)."""
        return dict(self._client.request("GET", self._path("/metrics")))

    def poll(self):
        """The entrypoint's exit code if the sandbox has stopped, else None."""
        self.refresh()
        return self.returncode if self.state == "stopped" else None

    def wait(self, timeout=None):
        """Wait until the sandbox stops; returns its return code.

        Raises moat.Timeout if it is still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._info.get("state") != "stopped":
            if deadline is None:
                slice_s = _WAIT_SLICE
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.Timeout("sandbox %s still running after %ss" % (self.id, timeout))
                slice_s = max(1, min(_WAIT_SLICE, int(remaining + 0.999)))
            self._info = dict(self._client.request(
                "POST", self._path("/wait"), query={"timeout": slice_s}, timeout=slice_s + 30))
        if self._entrypoint is not None and self._entrypoint.returncode is None:
            self._entrypoint._info["exit_code"] = self.exit_code
        return self.returncode

    def snapshot_filesystem(self, name=None):
        """The sandbox's filesystem as it is now (its image plus its changes,
        deletions included) as a new :class:`moat.Image`, whose parent is the
        sandbox's image; the sandbox keeps running. Unnamed snapshots are
        removed by ``Image.prune()`` once no sandbox uses them. Raises
        moat.SandboxNotRunning once the sandbox has stopped."""
        body = {} if name is None else {"name": name}
        return Image(self._client, self._client.request("POST", self._path("/snapshot"),
                                                        json_body=body))

    # --- the entrypoint ------------------------------------------------------

    def _entrypoint_process(self):
        if self._entrypoint is None:
            exec_id = self._info.get("entrypoint_exec_id")
            if not exec_id:
                raise errors.InvalidArgument(
                    "sandbox %s has no entrypoint: pass a command to Sandbox.create(...), "
                    "or use sb.exec(...)" % self.id)
            self._entrypoint = Process(self._client, self.id, {"id": exec_id})
        return self._entrypoint

    @property
    def stdout(self):
        """The entrypoint's stdout (a StreamReader)."""
        return self._entrypoint_process().stdout

    @property
    def stderr(self):
        """The entrypoint's stderr (a StreamReader)."""
        return self._entrypoint_process().stderr

    @property
    def stdin(self):
        """The entrypoint's stdin."""
        return self._entrypoint_process().stdin

    # --- processes -----------------------------------------------------------

    def exec(self, *argv, timeout=None, env=None, workdir=None, user=None, stdin=True,
             text=True, tag=None):
        """Start a process; returns a Process right away.

        ``stdin=True`` (the default, as in Modal) gives the process a pipe you
        write with ``p.stdin.write()`` and close with ``p.stdin.write_eof()``;
        ``stdin=False`` gives it /dev/null. Output is ``str`` unless
        ``text=False``.
        """
        body = _exec_body(_argv_from(argv), timeout, env, workdir, user)
        body["stdin"] = bool(stdin)
        if tag is not None:
            body["tag"] = tag
        info = self._client.request("POST", self._path("/execs"), json_body=body)
        return Process(self._client, self.id, info, text=text)

    def processes(self):
        """Every exec the sandbox knows of, as Process objects."""
        doc = self._client.request("GET", self._path("/execs"))
        return [Process(self._client, self.id, info) for info in doc.get("execs", [])]

    def run(self, cmd, timeout=None, env=None, workdir=None, user=None, stdin=None):
        """Run one command to completion; returns a CommandResult.

        A str runs through ``bash -lc`` (``sh -lc`` without bash); a list is
        an argv. ``stdin`` (str or bytes) is sent, then closed.
        """
        if isinstance(cmd, str):
            body = _exec_body(None, timeout, env, workdir, user)
            body["cmd"] = cmd
        else:
            body = _exec_body(_argv_from((cmd,)), timeout, env, workdir, user)
        if stdin is not None:
            if isinstance(stdin, (bytes, bytearray)):
                try:
                    stdin = bytes(stdin).decode("utf-8")
                except UnicodeDecodeError:
                    raise errors.InvalidArgument(
                        "run() takes UTF-8 stdin; use exec() and p.stdin.write() for binary") from None
            body["stdin"] = stdin
        request_timeout = None if timeout is None else timeout + 60
        return CommandResult(self._client.request("POST", self._path("/run"), json_body=body,
                                                  timeout=request_timeout))


def _id_part(sandbox_id):
    """Ids go into a URL path: refuse anything that could change the route."""
    if not isinstance(sandbox_id, str) or not sandbox_id or "/" in sandbox_id \
            or "?" in sandbox_id or "#" in sandbox_id or sandbox_id in (".", ".."):
        raise errors.InvalidArgument("not a sandbox id: %r" % (sandbox_id,))
    return sandbox_id
