"""A process started in a sandbox: its output streams, its stdin, its exit."""

import codecs
import time

from . import errors
from ._transport import decode_data

# Server-side waits are sliced so that a wait with no deadline still notices a
# vanished daemon within a minute instead of hanging on a dead socket forever.
_WAIT_SLICE = 60


class StreamReader:
    """stdout or stderr of a process, read over its own streaming request.

    The request is opened lazily on the first read, with ``?stream=<name>``,
    so reading stdout never waits for stderr to be drained and vice versa.
    Iterating yields lines (with their newline); ``read()`` returns the rest.
    Output is ``str`` (UTF-8, undecodable bytes replaced) unless the process
    was started with ``text=False``.
    """

    def __init__(self, process, name, text=True):
        self._process = process
        self.name = name
        self.text = text
        self._stream = None
        self._buffer = bytearray()
        self._eof = False

    def _open(self):
        if self._stream is None and not self._eof:
            p = self._process
            self._stream = p._client.stream(
                "/v1/sandboxes/%s/execs/%s/output" % (p.sandbox_id, p.id),
                query={"stream": self.name})

    def _next_chunk(self):
        """Bytes of the next output event, or None at the end."""
        if self._eof:
            return None
        self._open()
        while True:
            event = self._stream.next_event()
            if event is None:
                self._finish()
                return None
            if "exit_code" in event and "stream" not in event:
                self._process._record_exit(event)
                self._finish()
                return None
            if event.get("stream") == self.name:
                data = decode_data(event)
                if data:
                    return data

    def _finish(self):
        self._eof = True
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _convert(self, data):
        return data.decode("utf-8", "replace") if self.text else bytes(data)

    def read(self):
        """Everything until the process closes the stream."""
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                break
            self._buffer += chunk
        data, self._buffer = self._buffer, bytearray()
        return self._convert(data)

    def readline(self):
        """The next line including its newline; empty at the end."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = self._buffer[:newline + 1]
                del self._buffer[:newline + 1]
                return self._convert(line)
            chunk = self._next_chunk()
            if chunk is None:
                line, self._buffer = self._buffer, bytearray()
                return self._convert(line)
            self._buffer += chunk

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def chunks(self):
        """Output as it arrives, chunk by chunk, holding none of it.

        For large or binary output where lines do not matter. In text mode
        a multi-byte character split across chunks is decoded whole.
        """
        decoder = codecs.getincrementaldecoder("utf-8")("replace") if self.text else None
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            yield decoder.decode(data) if decoder else data
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                if decoder:
                    tail = decoder.decode(b"", final=True)
                    if tail:
                        yield tail
                return
            yield decoder.decode(chunk) if decoder else chunk

    def close(self):
        """Stop reading; unread output stays with moatd for another reader."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class StdinWriter:
    """stdin of a process. Each write is sent at once; ``write_eof`` closes it."""

    # The server takes at most 1 MiB per request.
    _MAX_WRITE = 1024 * 1024
    # How long a write retries while the process does not drain its stdin.
    _QUEUE_FULL_PATIENCE = 60.0

    def __init__(self, process):
        self._process = process
        self.closed = False

    def _path(self, suffix=""):
        p = self._process
        return "/v1/sandboxes/%s/execs/%s/stdin%s" % (p.sandbox_id, p.id, suffix)

    def write(self, data):
        """Send bytes (or str, as UTF-8). Returns the number of bytes sent."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("stdin.write() takes bytes or str, not %s" % type(data).__name__)
        data = bytes(data)
        if self.closed:
            raise errors.StdinClosed("stdin of %s is closed" % self._process.id)
        sent = 0
        while sent < len(data):
            piece = data[sent:sent + self._MAX_WRITE]
            self._write_piece(piece)
            sent += len(piece)
        return sent

    def _write_piece(self, piece):
        deadline = time.monotonic() + self._QUEUE_FULL_PATIENCE
        delay = 0.005
        while True:
            try:
                self._process._client.request("POST", self._path(), raw_body=piece)
                return
            except errors.LimitExceeded:
                # 429: more than 4 MiB queued that the process has not read
                # yet. Wait for it to catch up rather than drop data.
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def drain(self):
        """Writes are sent synchronously; kept for Modal compatibility."""

    def write_eof(self):
        """Close stdin: the process reads end-of-file."""
        if self.closed:
            return
        self._process._client.request("POST", self._path("/close"))
        self.closed = True

    close = write_eof


class Process:
    """A process in a sandbox (an *exec*). Like subprocess.Popen, over HTTP."""

    def __init__(self, client, sandbox_id, info, text=True):
        self._client = client
        self.sandbox_id = sandbox_id
        self.id = info["id"]
        self._info = dict(info)
        self.text = text
        self.stdout = StreamReader(self, "stdout", text)
        self.stderr = StreamReader(self, "stderr", text)
        self.stdin = StdinWriter(self)

    def __repr__(self):
        return "<moat.Process %s in %s pid=%s returncode=%r>" % (
            self.id, self.sandbox_id, self.pid, self.returncode)

    @property
    def pid(self):
        """The process's pid inside the sandbox."""
        return self._info.get("pid")

    @property
    def argv(self):
        return self._info.get("argv")

    @property
    def returncode(self):
        """Exit code once exited (128+n for signal n, 124 on timeout), else None."""
        return self._info.get("exit_code")

    @property
    def signal_number(self):
        return self._info.get("signal")

    @property
    def timed_out(self):
        return bool(self._info.get("timed_out"))

    @property
    def oom_killed(self):
        return bool(self._info.get("oom_killed"))

    @property
    def info(self):
        """The last exec object seen from the server, as a dict."""
        return dict(self._info)

    def _path(self, suffix=""):
        return "/v1/sandboxes/%s/execs/%s%s" % (self.sandbox_id, self.id, suffix)

    def _record_exit(self, event):
        for key in ("exit_code", "signal", "timed_out", "oom_killed"):
            if key in event:
                self._info[key] = event[key]

    def _update(self, info):
        if isinstance(info, dict) and info.get("id") == self.id:
            self._info.update(info)

    def _exited(self):
        return self._info.get("exit_code") is not None

    def refresh(self):
        self._update(self._client.request("GET", self._path()))
        return self

    def poll(self):
        """The return code if the process has exited, else None (no waiting)."""
        if not self._exited():
            self.refresh()
        return self.returncode

    def wait(self, timeout=None):
        """Wait for the process to exit; returns its return code.

        Raises moat.Timeout if it is still running after ``timeout`` seconds.
        Like subprocess with pipes, a process that fills its output pipes
        blocks until someone reads them.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._exited():
            if deadline is None:
                slice_s = _WAIT_SLICE
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.Timeout("process %s still running after %ss" % (self.id, timeout))
                slice_s = max(1, min(_WAIT_SLICE, int(remaining + 0.999)))
            self._update(self._client.request(
                "POST", self._path("/wait"), query={"timeout": slice_s}, timeout=slice_s + 30))
        return self.returncode

    def signal(self, signum):
        """Send a signal (number or name like "SIGTERM") to the process group."""
        self._client.request("POST", self._path("/signal"), json_body={"signal": signum})

    def terminate(self):
        self.signal(15)

    def kill(self):
        self.signal(9)
