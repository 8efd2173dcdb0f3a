"""Start a real moatd in its own temp dir and prove it leaves nothing behind.

Used by tests/e2e and sdk/python/tests. One moatd per test module: the
module's tests share it, and its teardown asserts that no mount, cgroup,
process, control socket, file descriptor or registry row outlived the
sandboxes the module created.

moatd runs in cgroups of its own (a fresh `moat-e2e-*` child of ours in
every cgroup v1 hierarchy, and in a controller-less v2 hierarchy) so that
sandboxes of another moatd running at the same time on this host are never
mistaken for our leaks; on a pure v2 host with controllers it stays in ours.
"""

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "sdk", "python"))

import moat  # noqa: E402

SANDBOX_UID_MIN = 65536  # every sandbox's id range starts at or above this

# Networking names of one moatd instance: its nft table, host-side veths and
# address pools. Each instance gets its own so that moatds running at the same
# time (other modules, other pytest processes) never see each other's.
_instance_counter = itertools.count()


def _net_prefix(index):
    # Fixed width: no instance's prefix may be a prefix of another's, since
    # moatd names its interfaces "<prefix>-<slot>" (older builds matched "<prefix>*").
    return "mte%03d" % index


def _net_index_in_use(index):
    prefix = _net_prefix(index)
    if any(name.startswith(prefix) for name in _host_links()):
        return True
    try:
        done = subprocess.run(["ip", "-4", "route", "show", "to", "root", "10.%d.0.0/16" % index],
                              capture_output=True, text=True, timeout=10)
        return bool(done.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return False


def _claim_net_index():
    """A k in 1..254 (not 89: moatd's default pool is 10.89.0.0/16) that no
    other instance on this host uses; claimed with an O_EXCL lock file."""
    start = (os.getpid() * 7 + next(_instance_counter) * 13) % 254
    os.makedirs("/run/lock", exist_ok=True)
    for step in range(254):
        index = (start + step) % 254 + 1
        if index == 89 or _net_index_in_use(index):
            continue
        lock = "/run/lock/moat-e2e-net-%d" % index
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(lock) as f:
                    owner = int(f.read().strip() or 0)
            except (OSError, ValueError):
                continue
            if owner and not os.path.exists("/proc/%d" % owner):
                os.unlink(lock)  # its pytest died without releasing it; next round may take it
            continue
        os.write(fd, b"%d\n" % os.getpid())
        os.close(fd)
        return index
    raise RuntimeError("no free network index for a test moatd")


def _host_links():
    try:
        return os.listdir("/sys/class/net")
    except FileNotFoundError:
        return []


def build_dir():
    return os.environ.get("MOAT_BUILD", "/work/main/build")


def moatd_binary():
    return os.path.join(build_dir(), "src", "daemon", "moatd")


# --- /proc helpers -------------------------------------------------------------

def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def proc_status(pid):
    fields = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields


def vmrss_kib(pid):
    status = proc_status(pid)
    return int(status["VmRSS"].split()[0]) if status and "VmRSS" in status else 0


def all_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def real_uid(pid):
    status = proc_status(pid)
    return int(status["Uid"].split()[0]) if status else None


def parent_pid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def descendants(root):
    children = {}
    for pid in all_pids():
        ppid = parent_pid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def mount_points(pid="self"):
    points = []
    try:
        with open("/proc/%s/mountinfo" % pid) as f:
            for line in f:
                points.append(line.split()[4].replace("\\040", " "))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return points


def cgroup_mounts():
    """[(mount point, key)] per hierarchy; key is the v1 controller list
    (e.g. "cpu,cpuacct" or "name=systemd") or "" for v2."""
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, options = right.split()[:3]
            mount_point = left.split()[4]
            if fstype == "cgroup2":
                result.append((mount_point, ""))
            elif fstype == "cgroup":
                keys = [o for o in options.split(",")
                        if o not in ("rw", "ro") and not o.startswith(("relatime", "nosuid", "nodev",
                                                                        "noexec", "clone_children",
                                                                        "release_agent", "xattr",
                                                                        "cpuset_v2_mode"))]
                result.append((mount_point, ",".join(sorted(keys))))
    return result


def cgroup_paths(pid):
    """{key: path} from /proc/<pid>/cgroup, keys as in cgroup_mounts()."""
    paths = {}
    with open("/proc/%s/cgroup" % pid) as f:
        for line in f:
            _hid, controllers, path = line.rstrip("\n").split(":", 2)
            paths[",".join(sorted(controllers.split(","))) if controllers else ""] = path
    return paths


def cgroup_dirs_of(pid):
    """The directory of pid's cgroup in every mounted hierarchy."""
    paths = cgroup_paths(pid)
    dirs = []
    for mount_point, key in cgroup_mounts():
        if key in paths:
            dirs.append(os.path.join(mount_point, paths[key].lstrip("/")))
    return dirs


def subdirs(path):
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def cgroup_procs(directory):
    """Pids in a cgroup and all its descendants."""
    pids = []
    for dirpath, _dirnames, filenames in os.walk(directory):
        if "cgroup.procs" in filenames:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids += [int(x) for x in f.read().split()]
            except OSError:
                pass
    return pids


def find_sandbox_cgroups(moat_dirs, sandbox_id):
    """Cgroup dirs of one sandbox (names contain its id) under the moat dirs."""
    found = []
    for base in moat_dirs:
        for dirpath, dirnames, _ in os.walk(base):
            for d in dirnames:
                if sandbox_id in d:
                    found.append(os.path.join(dirpath, d))
    return found


# --- raw HTTP --------------------------------------------------------------------

def raw_request(socket_path, data, timeout=10.0):
    """Send raw bytes, read until the server closes or one response is complete.

    Returns (status, headers dict (lower-case keys), body bytes); status is
    None if the server closed without answering.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    received = bytearray()
    try:
        sock.connect(socket_path)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) and close before reading it all
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            parsed = _parse_response(bytes(received))
            if parsed is not None:
                return parsed
    finally:
        sock.close()
    parsed = _parse_response(bytes(received), eof=True)
    return parsed if parsed is not None else (None, {}, bytes(received))


def _parse_response(data, eof=False):
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = data[:head_end].decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not match:
        return (None, {}, data)
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    body = data[head_end + 4:]
    if "chunked" in headers.get("transfer-encoding", ""):
        out, rest = bytearray(), body
        while True:
            eol = rest.find(b"\r\n")
            if eol < 0:
                return (int(match.group(1)), headers, bytes(out)) if eof else None
            size = int(rest[:eol].split(b";")[0], 16)
            if size == 0:
                return int(match.group(1)), headers, bytes(out)
            if len(rest) < eol + 2 + size + 2:
                return (int(match.group(1)), headers, bytes(out)) if eof else None
            out += rest[eol + 2:eol + 2 + size]
            rest = rest[eol + 2 + size + 2:]
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(body) >= n:
            return int(match.group(1)), headers, body[:n]
        return (int(match.group(1)), headers, body) if eof else None
    return (int(match.group(1)), headers, body) if eof else None


def http_request(method, path, body=None, headers=None):
    """Build raw request bytes (Connection: close)."""
    if isinstance(body, str):
        body = body.encode()
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: localhost", "Connection: close"]
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    if body is not None:
        hdrs.setdefault("Content-Length", str(len(body)))
    lines += ["%s: %s" % kv for kv in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


# --- the daemon ------------------------------------------------------------------

class Moatd:
    """One moatd in its own temp dir. start(), then stop_and_check_leaks()."""

    def __init__(self, name="e2e", extra_args=None):
        self.extra_args = list(extra_args or [])
        self.tmp = tempfile.mkdtemp(prefix="moat-%s-" % name)
        self.data_dir = os.path.join(self.tmp, "data")
        self.run_dir = os.path.join(self.tmp, "run")
        self.socket = os.path.join(self.tmp, "moatd.sock")
        self.log_path = os.path.join(self.tmp, "moatd.log")
        self.proc = None
        self.pid = None
        self.fd_baseline = None
        self.wrapper_dirs = []   # our moat-e2e-* cgroups, one per hierarchy
        self.uid_pids_before = set()
        self.failed = False
        self._helptext = None
        # Networking (only passed when moatd has --net-prefix): see _claim_net_index.
        self.net_index = None
        self.net_prefix = None
        self.net_pool4 = None
        self.net_pool6 = None
        self.net_fd_baseline = None

    # start-up --------------------------------------------------------------

    def _make_wrapper_cgroups(self):
        """A fresh cgroup per hierarchy for moatd, so leak checks see only its own."""
        name = "moat-e2e-%d-%s" % (os.getpid(), os.path.basename(self.tmp))
        own = cgroup_paths("self")
        hybrid = any(key and not key.startswith("name=") for _, key in cgroup_mounts())
        for mount_point, key in cgroup_mounts():
            if key not in own:
                continue
            directory = os.path.join(mount_point, own[key].lstrip("/"))
            if key == "" and not hybrid:
                # Pure v2: moatd must enable controllers below its own cgroup,
                # which the no-internal-process rule forbids in a fresh child
                # that holds moatd itself. Leave it where we are.
                continue
            wrapper = os.path.join(directory, name)
            try:
                os.mkdir(wrapper)
                if "cpuset" in key.split(","):
                    for leaf in ("cpuset.cpus", "cpuset.mems"):
                        with open(os.path.join(directory, leaf)) as src:
                            value = src.read().strip()
                        with open(os.path.join(wrapper, leaf), "w") as dst:
                            dst.write(value)
            except OSError:
                try:
                    os.rmdir(wrapper)
                except OSError:
                    pass
                continue
            self.wrapper_dirs.append(wrapper)

    def _enter_wrappers(self):
        # Runs in the child between fork and exec: move it into our cgroups.
        for wrapper in self.wrapper_dirs:
            try:
                with open(os.path.join(wrapper, "cgroup.procs"), "w") as f:
                    f.write("0")
            except OSError:
                pass

    def helptext(self):
        if self._helptext is None:
            try:
                done = subprocess.run([moatd_binary(), "--help"], capture_output=True, timeout=5)
                self._helptext = done.stdout + done.stderr
            except (OSError, subprocess.TimeoutExpired):
                self._helptext = b""
        return self._helptext

    def supports_network(self):
        return b"--net-prefix" in self.helptext()

    def command(self):
        binary = moatd_binary()
        args = [binary, "--data-dir", self.data_dir, "--run-dir", self.run_dir,
                "--socket", self.socket]
        helptext = self.helptext()
        init = os.path.join(build_dir(), "src", "init", "moat-init")
        if b"--init" in helptext and os.path.exists(init):
            args += ["--init", init]
        if self.supports_network():
            if self.net_index is None:
                self.net_index = _claim_net_index()
                k = self.net_index
                self.net_prefix = _net_prefix(k)
                self.net_pool4 = "10.%d.0.0/16" % k
                self.net_pool6 = "fd6d:6f61:74%02x::/48" % k
            args += ["--net-prefix", self.net_prefix, "--net-pool4", self.net_pool4,
                     "--net-pool6", self.net_pool6]
        return args + self.extra_args

    def start(self):
        if not os.access(moatd_binary(), os.X_OK):
            raise RuntimeError("no moatd at %s (set MOAT_BUILD)" % moatd_binary())
        os.makedirs(self.data_dir)
        os.makedirs(self.run_dir)
        self.uid_pids_before = {p for p in all_pids() if (real_uid(p) or 0) >= SANDBOX_UID_MIN}
        self._make_wrapper_cgroups()
        self._launch()
        # Steady state: one full sandbox cycle first, so lazily opened
        # long-lived descriptors (database, worker pool) count as baseline.
        try:
            sb = moat.Sandbox.create(socket=self.socket)
            try:
                sb.exec("true", stdin=False).wait(timeout=30)
            finally:
                sb.terminate()
        except moat.Error:
            pass  # the tests will report it; the baseline is still useful
        self.fd_baseline = self.settled_fd_count()
        self.net_fd_baseline = len(self.netns_fds())

    def _launch(self):
        """Start moatd on this instance's dirs (appending to its log); wait for /v1/health."""
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=self._enter_wrappers)
        finally:
            log.close()
        self.pid = self.proc.pid
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("moatd exited with %s during start-up:\n%s"
                                   % (self.proc.returncode, self.log()))
            try:
                moat.health(socket=self.socket)
                break
            except moat.Error:
                if time.monotonic() > deadline:
                    raise RuntimeError("moatd did not answer /v1/health in 15 s:\n%s" % self.log())
                time.sleep(0.05)

    def restart(self):
        """A new moatd on the same data and run dirs (after the old one died)."""
        self._launch()

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return "(no log)"
        return data[-20000:].decode("utf-8", "replace")

    def client(self):
        return moat.Client(self.socket)

    def fd_count(self):
        return fd_count(self.pid)

    def settled_fd_count(self, target=None, wait=5.0):
        """moatd's fd count once it stops changing (closes are asynchronous)."""
        deadline = time.monotonic() + wait
        last = fd_count(self.pid)
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = fd_count(self.pid)
            if target is not None and now <= target:
                return now
            if target is None and now == last:
                return now
            last = now
        return last

    def raw(self, data, timeout=10.0):
        return raw_request(self.socket, data, timeout)

    def moat_dirs(self):
        """<moatd's cgroup>/moat in every hierarchy (where sandbox cgroups live)."""
        if self.wrapper_dirs:
            return [os.path.join(w, "moat") for w in self.wrapper_dirs]
        return [os.path.join(d, "moat") for d in cgroup_dirs_of(self.pid)]

    def healthy(self, timeout=5.0):
        return moat.Client(self.socket, timeout=timeout).request("GET", "/v1/health")

    # networking state --------------------------------------------------------

    def net_links(self):
        """Host interfaces named with this instance's prefix (its sandboxes' veths)."""
        if not self.net_prefix:
            return []
        return sorted(n for n in _host_links() if n.startswith(self.net_prefix))

    def nft_table(self):
        """The nft JSON list of this instance's table, or None if it does not exist."""
        if not self.net_prefix:
            return None
        try:
            done = subprocess.run(["nft", "-j", "list", "table", "inet", self.net_prefix],
                                  capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        return json.loads(done.stdout).get("nftables", [])

    def nft_sandbox_elements(self):
        """Set and map elements in our table that belong to a sandbox. moatd
        keys every sandbox's elements by its host-side interface name
        (src/daemon/nft.h), so an element naming "<prefix>..." is a sandbox's."""
        table = self.nft_table()
        if not table:
            return []
        found = []
        for entry in table:
            for kind in ("set", "map"):
                body = entry.get(kind)
                if body:
                    for element in body.get("elem") or []:
                        if self.net_prefix in json.dumps(element):
                            found.append("%s %s: %s" % (kind, body.get("name"), json.dumps(element)[:160]))
        return found

    def netns_fds(self):
        return [t for t in _fd_targets(self.pid) if t.startswith("net:[")]

    def net_problems(self):
        """Networking state that outlives the sandboxes: host veths with our
        prefix, per-sandbox nft elements, named netns or netns descriptors."""
        if not self.net_prefix:
            return []
        problems = []
        links = self.net_links()
        if links:
            problems.append("host links left with prefix %s: %s" % (self.net_prefix, links))
        elements = self.nft_sandbox_elements()
        if elements:
            problems.append("nft elements left in inet %s: %s" % (self.net_prefix, elements[:10]))
        # moatd's namespaces are anonymous (held by the sandbox's processes
        # and moatd's descriptors); a named one would be a bind mount in
        # /run/netns, and mounts under our temp dir are checked elsewhere.
        try:
            named = [n for n in os.listdir("/run/netns") if n.startswith(self.net_prefix)]
        except FileNotFoundError:
            named = []
        if named:
            problems.append("named network namespaces left: %s" % named)
        if self.proc is not None and self.proc.poll() is None and self.net_fd_baseline is not None:
            held = self.netns_fds()
            if len(held) > self.net_fd_baseline:
                problems.append("moatd holds %d netns fds, baseline %d" % (len(held), self.net_fd_baseline))
        return problems

    # teardown --------------------------------------------------------------

    def delete_all_sandboxes(self):
        problems = []
        try:
            for info in self.client().request("GET", "/v1/sandboxes").get("sandboxes", []):
                try:
                    self.client().request("DELETE", "/v1/sandboxes/%s" % info["id"])
                except moat.NotFound:
                    pass
            left = self.client().request("GET", "/v1/sandboxes").get("sandboxes", [])
            if left:
                problems.append("registry rows left after DELETE: %s" % [s["id"] for s in left])
        except moat.Error as exc:
            problems.append("could not list/delete sandboxes: %s" % exc)
        return problems

    def live_problems(self):
        """Leaks visible while moatd still runs and has no sandbox."""
        problems = []
        if self.fd_baseline is not None:
            fds = self.settled_fd_count(target=self.fd_baseline)
            if fds > self.fd_baseline:
                problems.append("moatd holds %d fds, baseline %d: %s" % (
                    fds, self.fd_baseline, sorted(_fd_targets(self.pid))))
        for mount_pid in ("self", self.pid):
            under = [m for m in mount_points(mount_pid) if m.startswith(self.tmp)]
            if under:
                problems.append("mounts under %s (in /proc/%s/mountinfo): %s" % (self.tmp, mount_pid, under))
        problems += self._cgroup_problems()
        leaked = [p for p in descendants(self.pid) if (real_uid(p) or 0) >= SANDBOX_UID_MIN]
        if leaked:
            problems.append("sandbox-uid processes still under moatd: %s" % _describe(leaked))
        problems += self._socket_problems()
        problems += self.net_problems()
        return problems

    def _cgroup_problems(self):
        problems = []
        for moat_dir in self.moat_dirs():
            left = subdirs(moat_dir)
            if left:
                problems.append("cgroups left in %s: %s" % (moat_dir, left))
        return problems

    def _socket_problems(self):
        left = []
        for dirpath, _dirs, files in os.walk(self.run_dir):
            for name in files:
                path = os.path.join(dirpath, name)
                if name.endswith(".sock") and os.path.realpath(path) != os.path.realpath(self.socket):
                    left.append(path)
        return ["control sockets left: %s" % left] if left else []

    def stop_and_check_leaks(self):
        """Delete every sandbox, check, SIGTERM moatd, check again. Returns problems."""
        problems = []
        if self.proc is None:
            return problems
        if self.proc.poll() is None:
            problems += self.delete_all_sandboxes()
            problems += self.live_problems()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                problems.append("moatd did not exit within 20 s of SIGTERM")
                self.proc.kill()
                self.proc.wait()
        else:
            problems.append("moatd died during the tests (status %s)" % self.proc.returncode)
        if self.proc.returncode not in (0, -signal.SIGTERM):
            problems.append("moatd exited with status %s after SIGTERM" % self.proc.returncode)
        under = [m for m in mount_points("self") if m.startswith(self.tmp)]
        if under:
            problems.append("mounts under %s after moatd exited: %s" % (self.tmp, under))
        problems += self._cgroup_problems()
        in_our_cgroups = set()
        for wrapper in self.wrapper_dirs:
            in_our_cgroups.update(cgroup_procs(wrapper))
        new_uid = [p for p in all_pids() if p not in self.uid_pids_before
                   and (real_uid(p) or 0) >= SANDBOX_UID_MIN and p in in_our_cgroups]
        if in_our_cgroups:
            problems.append("processes left in moatd's cgroups after it exited: %s"
                            % _describe(sorted(in_our_cgroups)))
        elif new_uid:
            problems.append("sandbox-uid processes left: %s" % _describe(new_uid))
        problems += self._socket_problems()
        problems += self.net_problems()
        return problems

    def cleanup(self):
        """Remove what the checks found, so one failure does not poison the host."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for wrapper in self.wrapper_dirs:
            for pid in cgroup_procs(wrapper):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for mount_point in sorted((m for m in mount_points("self") if m.startswith(self.tmp)),
                                  key=len, reverse=True):
            subprocess.run(["umount", "-l", mount_point], stderr=subprocess.DEVNULL)
        for wrapper in self.wrapper_dirs:
            deadline = time.monotonic() + 5
            for dirpath, _dirs, _files in sorted(os.walk(wrapper), key=lambda t: -len(t[0])):
                while True:
                    try:
                        os.rmdir(dirpath)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.05)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._release_net()

    def _release_net(self):
        """Remove what networking checks found (veths, our nft table), then the claim."""
        if self.net_index is None:
            return
        for name in self.net_links():
            subprocess.run(["ip", "link", "del", name], stderr=subprocess.DEVNULL)
        if self.nft_table() is not None:
            subprocess.run(["nft", "delete", "table", "inet", self.net_prefix], stderr=subprocess.DEVNULL)
        try:
            os.unlink("/run/lock/moat-e2e-net-%d" % self.net_index)
        except FileNotFoundError:
            pass
        self.net_index = None


def _fd_targets(pid):
    targets = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            targets.append(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            pass
    return targets


def _describe(pids):
    return ["%d uid=%s %s" % (p, real_uid(p), b" ".join(cmdline(p))[:80].decode("utf-8", "replace"))
            for p in pids]


def sandbox_maker(moatd):
    """Body of a `make` fixture: yields make(**create_kwargs) -> a sandbox on
    moatd, every one of them deleted when the test ends."""
    made = []

    def create(**kwargs):
        sb = moat.Sandbox.create(socket=moatd.socket, **kwargs)
        made.append(sb)
        return sb
    yield create
    for sb in made:
        sb.terminate()


def moatd_fixture(request, name, extra_args=None):
    """Body of the module-scoped fixture: yields a started Moatd."""
    daemon = Moatd(name, extra_args=extra_args)
    try:
        daemon.start()
    except Exception:
        daemon.cleanup()
        raise
    try:
        yield daemon
        problems = daemon.stop_and_check_leaks()
        if problems:
            sys.stderr.write("---- moatd log (%s) ----\n%s\n" % (daemon.log_path, daemon.log()))
            raise AssertionError("moatd leaked:\n  " + "\n  ".join(problems))
    finally:
        daemon.cleanup()


def attach_log_on_failure(item, report):
    """pytest_runtest_makereport helper: a failed test's report carries the
    tail of its moatd's log."""
    daemon = getattr(item, "funcargs", {}).get("moatd")
    if report.failed and isinstance(daemon, Moatd):
        report.sections.append(("moatd log (%s)" % daemon.log_path, daemon.log()[-8000:]))
