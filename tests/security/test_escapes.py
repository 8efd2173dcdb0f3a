"""Container-escape classes, from the attacker's side inside a sandbox.

Each test tries a known route out of a container (host kernel knobs that run
a helper as host root, cgroup release agents, overwriting the runtime
through /proc/<pid>/exe, leaked fds or cwd pointing at the host, symlinked
mask targets in the image, setuid and file-capability binaries, ptrace of
another sandbox) and checks the host afterwards. tests/e2e/test_isolation.py
covers the basics (drop_caches, domainname, sysrq, /proc/sys read-only,
PTRACE_ATTACH of init); these go further. Every attack is also run on the
host, or its host-side effect is checked, so that each test can fail.
"""

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
import uuid

import pytest

import attack
import moatd_harness
from registry_fixture import Layout, MEDIA_CONFIG, MEDIA_LAYER_GZIP, MEDIA_MANIFEST

moat = attack.moat

# Host files whose write by host root runs a program as host root (or
# changes host-wide behaviour), as the classic escapes use them.
HOST_KNOBS = [
    "/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/proc/sys/kernel/hotplug",
    "/proc/sysrq-trigger", "/sys/kernel/uevent_helper", "/proc/sys/fs/binfmt_misc/register",
    "/proc/sys/vm/overcommit_memory", "/proc/sys/vm/panic_on_oom", "/proc/sys/vm/drop_caches",
    "/proc/sys/kernel/panic", "/proc/sys/kernel/core_uses_pid", "/proc/sys/fs/suid_dumpable",
    "/proc/sys/kernel/randomize_va_space", "/proc/sys/net/ipv4/ip_forward",
]
READABLE_KNOBS = [p for p in HOST_KNOBS if p not in ("/proc/sysrq-trigger", "/proc/sys/fs/binfmt_misc/register",
                                                      "/proc/sys/vm/drop_caches")]


def python(sb, program, **kwargs):
    r = sb.run(["python3", "-c", program], timeout=60, **kwargs)
    assert r.exit_code == 0, r.stderr
    return r.stdout


def host_values(paths):
    values = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                values[path] = f.read()
        except OSError as e:
            values[path] = "error %d" % e.errno
    return values


WRITE_EACH = r"""
import errno, os, sys
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        print(path, "open", errno.errorcode[e.errno]); continue
    try:
        os.write(fd, b"|/tmp/moat-escape %p\n" if "core_pattern" in path else b"0\n")
        print(path, "WRITTEN")
    except OSError as e:
        print(path, "write", errno.errorcode[e.errno])
    finally:
        os.close(fd)
"""


def test_host_code_execution_knobs_are_unwritable(sandbox):
    """Attack: write core_pattern ("|/path" runs as host root on the next
    crash), modprobe, hotplug, uevent_helper, binfmt_misc register, sysrq and
    vm/kernel sysctls, directly and through /proc/1/root and /proc/self/root.
    Bound: every open-for-write or write fails, and every host value is
    unchanged afterwards."""
    paths = HOST_KNOBS + ["/proc/1/root" + p for p in HOST_KNOBS[:3]] + \
        ["/proc/self/root" + p for p in HOST_KNOBS[:3]]
    before = host_values(READABLE_KNOBS)
    out = python(sandbox, "import sys\nsys.argv[1:] = %r\n" % paths + WRITE_EACH)
    print(out)
    assert "WRITTEN" not in out, out
    assert len(out.splitlines()) == len(paths)
    assert host_values(READABLE_KNOBS) == before


MOUNT_FRESH = r"""
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("/tmp/moat-mnt", exist_ok=True)
for fstype, data in (("proc", None), ("sysfs", None), ("binfmt_misc", None), ("cgroup", b"memory"),
                     ("cgroup", b"none,name=moat-escape"), ("cgroup2", None), ("tmpfs", None),
                     ("devpts", b"newinstance")):
    r = libc.mount(fstype.encode(), b"/tmp/moat-mnt", fstype.encode(), 0, data)
    print(fstype, data and data.decode(), "MOUNTED" if r == 0 else errno.errorcode[ctypes.get_errno()])
    if r == 0:
        libc.umount2(b"/tmp/moat-mnt", 2)
os.rmdir("/tmp/moat-mnt")
"""


def test_fresh_proc_sysfs_cgroup_and_binfmt_mounts_fail(sandbox):
    """Attack: mount a fresh procfs, sysfs, binfmt_misc or cgroup hierarchy
    (unmasked /proc/sys, a writable release_agent or binfmt register) over a
    sandbox directory. Bound: every mount fails with EPERM in the sandbox,
    while the same program in a private mount namespace on the host mounts
    them (so the check sees a mount that works)."""
    out = python(sandbox, MOUNT_FRESH)
    print(out)
    assert out.count("EPERM") == 8, out
    host = subprocess.run(["unshare", "-m", "--propagation", "private", "/usr/bin/python3", "-c", MOUNT_FRESH],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert host.count("MOUNTED") >= 4, host


CGROUP_LOOK = r"""
import errno, os
types = [line.split(" - ")[1].split()[0] for line in open("/proc/self/mountinfo")]
print("cgroupfs", sorted(t for t in types if t.startswith("cgroup")))
found = []
for top in ("/sys/fs/cgroup", "/sys/kernel", "/proc"):
    for dirpath, dirnames, filenames in os.walk(top):
        if dirpath.startswith("/proc/") and dirpath[6:7].isdigit():
            dirnames[:] = []
            continue
        for name in filenames:
            if name in ("release_agent", "notify_on_release", "cgroup.procs", "memory.limit_in_bytes",
                        "memory.max", "pids.max", "cpu.max", "cpu.cfs_quota_us"):
                found.append(os.path.join(dirpath, name))
for path in found:
    try:
        with open(path, "w") as f:
            f.write("1" if "release" in path else "max")
        print(path, "WRITTEN")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
print("cgroup", open("/proc/self/cgroup").read().replace("\n", " "))
"""


def test_cgroup_release_agent_and_limits_are_out_of_reach(moatd, sandbox):
    """Attack: the release_agent escape (write a host path into a v1
    hierarchy's release_agent, set notify_on_release, empty the cgroup), or
    raising the sandbox's own memory/pids/cpu limits, or joining a parent
    cgroup through cgroup.procs. Bound: no cgroup filesystem is mounted in the
    sandbox and none can be (test above), no such file is reachable or
    writable anywhere, /proc/self/cgroup shows only the namespace root, and
    the sandbox's limits seen from the host are unchanged."""
    dirs = moatd_harness.find_sandbox_cgroups(moatd.moat_dirs(), sandbox.id)
    assert dirs, "the sandbox's cgroups are not found on the host"
    limits = [os.path.join(d, f) for d in dirs for f in ("memory.limit_in_bytes", "memory.max", "pids.max",
                                                           "cpu.max", "cpu.cfs_quota_us", "cgroup.procs")
              if os.path.exists(os.path.join(d, f))]
    before = host_values([p for p in limits if not p.endswith("cgroup.procs")])
    assert before, limits
    out = python(sandbox, CGROUP_LOOK)
    print(out)
    assert "cgroupfs []" in out, out
    assert "WRITTEN" not in out, out
    cgroup_line = [line for line in out.splitlines() if line.startswith("cgroup ")][0]
    assert all(entry.endswith(":/") for entry in cgroup_line.split()[1:]), cgroup_line
    assert host_values(list(before)) == before
    # The attack's processes are still in the sandbox's cgroups, not above.
    moved = [p for p in limits if p.endswith("cgroup.procs") and not open(p).read().split()]
    assert not moved, "the sandbox's processes left its cgroup: %s" % moved


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_runtime_cannot_be_overwritten_through_proc_exe(moatd, sandbox, tmp_path):
    """Attack (runc CVE-2019-5736): open /proc/1/exe (the runtime's init) or
    /proc/self/exe for writing, reopen an O_PATH fd through /proc/self/fd/N
    for writing, truncate, map it shared-writable, or change its seals.
    Bound: every attempt on /proc/1/exe fails (init is non-dumpable: EACCES,
    or a sealed memfd), the binaries the sandbox executes from the image are
    read-only (ETXTBSY/EROFS), and moat-init and moatd on the host are
    byte-for-byte unchanged. The same probe on a host file shows it would see
    a successful write."""
    init_binary = os.path.join(moatd_harness.build_dir(), "src", "init", "moat-init")
    before = (sha256(init_binary), sha256(moatd_harness.moatd_binary()))
    path = attack.install(sandbox, "probe")
    r = sandbox.run([path, "exe", "/proc/1/exe", "/proc/self/exe", "/usr/bin/python3"], timeout=60)
    assert r.exit_code == 0, r
    print(r.stdout)
    outcomes = dict(line.split("\t") for line in r.stdout.splitlines())
    writes = ("open-wronly", "open-rdwr", "truncate", "fd-write", "fd-ftruncate", "fd-add-seals",
              "reopen-wronly", "mmap-shared-write")
    for target in ("/proc/1/exe", "/proc/self/exe", "/usr/bin/python3"):
        for attempt in writes:
            assert outcomes[target + ":" + attempt] != "ok", (target, attempt)
    if outcomes.get("/proc/1/exe:seals") is not None:
        seals = int(outcomes["/proc/1/exe:seals"])
        assert seals & 0x1 and seals & 0x8, "init's memfd is not sealed: %#x" % seals  # SEAL, WRITE
    assert (sha256(init_binary), sha256(moatd_harness.moatd_binary())) == before
    # The probe does detect a writable executable.
    victim = tmp_path / "victim"
    victim.write_bytes(b"\x7fELF not really")
    host = subprocess.run([attack.binary("probe"), "exe", str(victim)], capture_output=True, text=True,
                          timeout=30, check=True).stdout
    assert "%s:open-wronly\tok" % victim in host, host


def host_directory_identities(moatd):
    """(dev "major:minor", inode) of host directories a leaked fd or cwd
    would expose: the host root and the daemon's own places."""
    paths = ["/", "/root", "/tmp", "/etc", "/var", "/run", "/work", "/proc/%d/cwd" % moatd.pid,
             os.path.dirname(moatd.socket), os.path.dirname(moatd_harness.moatd_binary()),
             "/sys/fs/cgroup"]
    identities = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        identities[("%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev)), str(st.st_ino))] = path
    return identities


def test_no_fd_or_cwd_in_the_sandbox_resolves_to_a_host_directory(moatd, sandbox):
    """Attack (runc CVE-2024-21626 class): find a leaked directory fd or
    cwd of a sandbox process (init included) through /proc/<pid>/{fd,cwd,root}
    and walk "../../.." from it to the host. Bound: every reachable object
    and every walk from a directory stays inside the sandbox: none has the
    device and inode of the host's /, /tmp, /etc, moatd's cwd, run or build
    directories. Run on the host, the same probe reports the host's / (so a
    leak would be seen)."""
    keeper = sandbox.exec("sleep", "30", stdin=False)  # a second process with its own fds
    try:
        path = attack.install(sandbox, "probe")
        r = sandbox.run([path, "fds"], timeout=60)
        assert r.exit_code == 0, r
    finally:
        keeper.kill()
        keeper.wait(timeout=30)
    identities = host_directory_identities(moatd)
    objects = [line.split("\t") for line in r.stdout.splitlines() if line.startswith("obj\t")]
    assert len(objects) >= 10, r.stdout
    leaks = [(o[1], identities[(o[2], o[3])]) for o in objects if (o[2], o[3]) in identities]
    assert not leaks, "sandbox objects resolving to host directories: %s" % leaks
    # init's cwd/root/fds are not even readable (non-dumpable).
    assert not [o for o in objects if o[1].startswith("/proc/1/")], "init's fds are reachable"
    host = subprocess.run([attack.binary("probe"), "fds"], capture_output=True, text=True, timeout=60).stdout
    host_objects = [line.split("\t") for line in host.splitlines() if line.startswith("obj\t")]
    assert any((o[2], o[3]) in identities for o in host_objects), "the probe cannot see host directories"


def symlink_layer(layout, probe_bytes, links):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("etc", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
            tar.addfile(info)
        info = tarfile.TarInfo("probe")
        info.size, info.mode, info.mtime = len(probe_bytes), 0o755, 1700000000
        tar.addfile(info, io.BytesIO(probe_bytes))
        for name, target in links.items():
            parent = os.path.dirname(name)
            if parent and parent not in ("etc", "tmp"):
                info = tarfile.TarInfo(parent)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
                tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1700000000
            tar.addfile(info)
    tar_bytes = raw.getvalue()
    return (layout.blob(gzip.compress(tar_bytes, mtime=0), MEDIA_LAYER_GZIP),
            "sha256:" + hashlib.sha256(tar_bytes).hexdigest())


def write_symlink_image(path, probe_bytes, links):
    layout = Layout(path)
    descriptor_layer, diff_id = symlink_layer(layout, probe_bytes, links)
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/probe"]},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": layout.blob(json.dumps(config).encode(), MEDIA_CONFIG),
                "layers": [descriptor_layer]}
    layout.tag(layout.blob(json.dumps(manifest).encode(), MEDIA_MANIFEST), "1")


@pytest.mark.parametrize("name,links", [
    # CVE-2025-31133: /dev/null (used to mask /proc files) swapped for a
    # symlink to a host-wide knob; /dev/console likewise.
    ("devnull", {"dev/null": "/proc/sys/kernel/core_pattern", "dev/console": "/proc/sysrq-trigger",
                 "dev/ptmx": "{sentinel}"}),
    # CVE-2019-16884 / CVE-2021-30465 class: the procfs / sysfs mount points
    # themselves are symlinks, so the mounts would land elsewhere.
    ("procdir", {"proc": "/etc"}),
    ("sysdir", {"sys": "/proc/sys"}),
    # /etc files moat writes are symlinks to host files.
    ("etcfiles", {"etc/hosts": "{sentinel}", "etc/resolv.conf": "/proc/sys/kernel/core_pattern",
                  "etc/hostname": "../../../../../../{sentinel}"}),
])
def test_symlinked_mask_targets_in_the_image(moatd, tmp_path, name, links):
    """Attack (runc CVE-2025-31133, CVE-2019-16884, CVE-2021-30465 class): an
    image whose /dev/null, /dev/console, /proc, /sys or /etc files are
    symlinks to host-sensitive targets (core_pattern, sysrq-trigger, a host
    sentinel file), so that the runtime's masking bind mounts or its /etc
    writes follow them. Bound: sandbox creation either fails cleanly (an
    error with a code) or succeeds with /proc a procfs, /proc/sys read-only,
    masks and /dev/null intact (a character device); in both cases the host
    sentinel, core_pattern and the host's /etc/hosts are unchanged."""
    sentinel = tmp_path / ("sentinel-%s" % uuid.uuid4().hex)
    sentinel.write_text("untouched\n")
    links = {k: v.replace("{sentinel}", str(sentinel).lstrip("/") if v.startswith("../") else str(sentinel))
             for k, v in links.items()}
    watched = [str(sentinel), "/proc/sys/kernel/core_pattern", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname"]
    before = host_values(watched)
    with open(attack.binary("probe"), "rb") as f:
        probe_bytes = f.read()
    layout = str(tmp_path / "layout")
    write_symlink_image(layout, probe_bytes, links)
    image = "symlinks-" + name
    client = moat.Client(moatd.socket, timeout=120)
    client.request("POST", "/v1/images/import", json_body={"path": layout, "name": image})
    try:
        try:
            sb = moat.Sandbox.create(image=image, socket=moatd.socket)
        except moat.errors.Error as e:
            # Refused: the error names what went wrong.
            print("refused:", e)
            assert e.code and e.code != "error" and e.message, e
            sb = None
        if sb is not None:
            try:
                r = sb.run(["/probe", "stat", "/dev/null", "/dev/console", "/proc", "/sys", "/proc/kcore",
                            "/proc/keys"], timeout=60)
                assert r.exit_code == 0, r
                m = sb.run(["/probe", "cat", "/proc/self/mountinfo"], timeout=60)
                w = sb.run(["/probe", "exe", "/dev/null"], timeout=60)  # writes to /dev/null go nowhere
            finally:
                sb.terminate()
            print(r.stdout, m.stdout)
            stats = {line.split("\t")[1]: line.split("\t")[2:] for line in r.stdout.splitlines()}
            assert stats["/dev/null"][:2] == ["char", "1:3"], stats
            assert stats["/proc"][0] == "dir" and stats["/sys"][0] == "dir", stats
            mounts = {line.split(" - ")[0].split()[4]: line for line in m.stdout.splitlines()}
            assert " - proc " in mounts["/proc"], mounts.get("/proc")
            assert mounts["/proc/sys"].split()[5].split(",")[0] == "ro", mounts.get("/proc/sys")
            assert " - sysfs " in mounts["/sys"] and mounts["/sys"].split()[5].startswith("ro"), mounts["/sys"]
            assert "/proc/keys" in mounts, "mask of /proc/keys missing"
            assert w.exit_code == 0
    finally:
        client.request("DELETE", "/v1/images/" + image)
    assert host_values(watched) == before


SETUID_CHECK = r"""
import os, shutil, subprocess, sys
probe = sys.argv[1]
for name in ("suid", "fcaps"):
    target = "/tmp/probe-" + name
    shutil.copy(probe, target)
    os.chown(target, 0, 0)
    if name == "suid":
        os.chmod(target, 0o4755)
    else:
        os.chmod(target, 0o755)
        # security.capability v2: CAP_SYS_ADMIN|CAP_DAC_READ_SEARCH permitted+effective
        value = (0x02000001).to_bytes(4, "little") + ((1 << 21) | (1 << 2)).to_bytes(4, "little") + \
            bytes(4) + bytes(8)
        try:
            os.setxattr(target, "security.capability", value)
        except OSError as e:
            print(name, "setxattr", e.errno)
    out = subprocess.run([target, "ids"], capture_output=True, text=True, user=1000, group=1000,
                         extra_groups=[]).stdout
    print(name, out.replace("\n", " | "))
"""


def test_setuid_and_file_capabilities_grant_nothing(sandbox, tmp_path):
    """Attack: as an unprivileged user inside the sandbox, exec a setuid-root
    copy of a binary, or one carrying file capabilities (CAP_SYS_ADMIN),
    both prepared by sandbox root. Bound: the exec'd process keeps euid 1000
    and an empty effective capability set (no_new_privs, nosuid), while on the
    host, without no_new_privs, the same setuid file runs with euid 0."""
    path = attack.install(sandbox, "probe")
    out = python(sandbox, "import sys\nsys.argv[1:] = [%r]\n" % path + SETUID_CHECK)
    print(out)
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        if "uid" not in rest:
            continue
        uids = rest.split("uid\t")[1].split("|")[0].split()
        assert uids == ["1000", "1000", "1000"], line
        assert "CapEff:\t0000000000000000" in rest, line
        assert "NoNewPrivs:\t1" in rest, line
    assert out.count("NoNewPrivs") == 2, out
    # Host: the same setuid file, without no_new_privs, gains euid 0.
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "probe-suid"
    target.write_bytes(open(attack.binary("probe"), "rb").read())
    os.chmod(target, 0o4755)
    host = subprocess.run(["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", str(target), "ids"],
                          capture_output=True, text=True, timeout=30)
    assert host.stdout.startswith("uid\t1000 0 0"), host


def test_lsm_attributes_cannot_be_changed(sandbox):
    """Attack: switch the LSM context of a process (its own or init's) through
    /proc/<pid>/attr/*, e.g. to an unconfined AppArmor/Smack label. Bound:
    every write fails."""
    program = r"""
import errno, os
for pid in ("self", "1"):
    for dirpath, _, files in os.walk("/proc/%s/attr" % pid):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "w") as f:
                    f.write("unconfined")
                print(path, "WRITTEN")
            except OSError as e:
                print(path, errno.errorcode[e.errno])
"""
    out = python(sandbox, program)
    print(out)
    assert "/proc/self/attr/" in out
    assert "WRITTEN" not in out, out


PTRACE_OTHER = r"""
import ctypes, errno, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
def call(name, *args):
    ctypes.set_errno(0)
    r = getattr(libc, name)(*args)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
target = int(sys.argv[1])
print("visible", os.path.exists("/proc/%d" % target))
print("ptrace-other", call("ptrace", 16, target, None, None))
print("kill-other", call("kill", target, 0))
print("pidfd-other", call("syscall", 434, target, 0))
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
print("ptrace-own", call("ptrace", 16, child, None, None))
os.kill(child, 9)
os.waitpid(child, 0)
"""


def test_ptrace_is_confined_to_the_sandbox(moatd, sandbox):
    """Attack: ptrace, signal or pidfd_open a process of another sandbox (or
    the host) by its host pid. Bound: ESRCH for all (it does not exist in this
    pid namespace), while PTRACE_ATTACH of the sandbox's own process works
    (ptrace is allowed, so the check is not vacuous)."""
    other = moat.Sandbox.create(socket=moatd.socket)
    try:
        victim = other.exec("sleep", "%d.%d" % (41, os.getpid() % 1000), stdin=False)
        host_pid = None
        deadline = time.monotonic() + 10
        while host_pid is None and time.monotonic() < deadline:
            for pid in moatd_harness.descendants(moatd.pid):
                if moatd_harness.cmdline(pid)[:2] == [b"sleep", ("41.%d" % (os.getpid() % 1000)).encode()]:
                    host_pid = pid
            time.sleep(0.05)
        assert host_pid, "the other sandbox's sleep was not found on the host"
        targets = [host_pid, os.getpid(), moatd.pid]
        for target in targets:
            out = python(sandbox, "import sys\nsys.argv[1:] = ['%d']\n" % target + PTRACE_OTHER)
            print(target, out)
            if "visible True" in out:
                pytest.fail("host pid %d is visible in the sandbox: %s" % (target, out))
            for check in ("ptrace-other", "kill-other", "pidfd-other"):
                assert "%s ESRCH" % check in out, (target, out)
            assert "ptrace-own ok" in out, out
        victim.kill()
        victim.wait(timeout=30)
    finally:
        other.terminate()
