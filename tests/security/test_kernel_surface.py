"""The kernel surface a sandbox's root can reach, from the attacker's side
(docs/SECURITY.md layer 14, src/cell/seccomp.c).

tests/security/probe.c makes each denied syscall with harmless, invalid
arguments, in a forked child, and prints the outcome. It runs three times:

- inside a sandbox (what the attacker gets);
- on the host in a fresh user+mount+pid+net+uts+ipc+cgroup namespace with the
  sandbox's capability set and no seccomp filter (`--sandbox-caps`): what the
  kernel itself would answer to the sandbox's root without layer 14;
- on the host as root (shows the probes really reach the kernel there).

A call whose unfiltered answer is not EPERM but which is EPERM in the sandbox
was answered by the filter: a call that reached the kernel would be a finding.
Extends tests/e2e/test_isolation.py (keyctl, bpf, unshare -U, a few sockets)
to the whole denied list, the other ABIs and every socket family.
"""

import os
import subprocess

import pytest

import attack

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64",
                                reason="probe.c's raw syscall numbers are x86_64's")

SIGSYS = 31

# What the sandbox must answer. Every one of these is refused by the filter
# (default EPERM, or an explicit rule); none may reach the kernel.
DENIED = [
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "mount", "umount2", "pivot_root", "setns", "fsopen", "fsconfig", "fsmount", "fspick",
    "open_tree", "open_tree_attr", "move_mount", "mount_setattr", "statmount", "listmount",
    "open_by_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "modify_ldt", "memfd_secret", "quotactl", "quotactl_fd", "swapon", "swapoff", "reboot",
    "acct", "syslog", "lookup_dcookie", "nfsservctl", "vhangup", "iopl", "ioperm",
    "create_module", "get_kernel_syms", "query_module", "uselib", "ustat", "sysfs", "_sysctl",
    "settimeofday", "clock_settime", "sethostname", "setdomainname", "mbind", "set_mempolicy",
    "get_mempolicy", "move_pages", "migrate_pages", "set_mempolicy_home_node", "fanotify_init",
    "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules", "process_madvise", "chroot",
    "mseal", "personality(READ_IMPLIES_EXEC)", "personality(ADDR_NO_RANDOMIZE)",
    "clone(NEWUSER)", "clone(NEWNS)", "clone(NEWNET)", "clone(NEWPID)", "clone(NEWUTS)",
    "clone(NEWIPC)", "clone(NEWCGROUP)",
    "unshare(NEWUSER)", "unshare(NEWNS)", "unshare(NEWNET)", "unshare(NEWPID)",
    "unshare(NEWUTS)", "unshare(NEWIPC)", "unshare(NEWCGROUP)", "unshare(NEWTIME)",
]
EXPECTED = dict.fromkeys(DENIED, "EPERM")
# clone3's flags live in memory seccomp cannot read: ENOSYS makes libc fall
# back to clone(), whose flags the filter checks.
EXPECTED["clone3"] = "ENOSYS"
# Allowed by the filter (as by Docker's profile): the kernel answers. These
# show the filter is an allowlist, not a wall, and that the probe works.
EXPECTED.update({
    "clone(plain)": "ok", "unshare(FILES)": "ok", "personality(query)": "ok", "kcmp": "ok",
    "pidfd_getfd": "EBADF", "landlock_create_ruleset": "ok", "name_to_handle_at": "ENOENT",
    "getpid": "ok",
    # The filter allows adjtimex/clock_adjtime (reading the clock); setting
    # it needs CAP_SYS_TIME in the initial namespace, which the sandbox lacks.
    "adjtimex(set)": "EPERM", "clock_adjtime(set)": "EPERM",
})

# Calls for which the unfiltered kernel answers the sandbox's root with
# something other than EPERM: here the filter is the only thing that says no,
# and the probe must keep proving it (a probe that lost its distinguishing
# arguments would make this test unable to fail).
MUST_BE_FILTER_PROVEN = {
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "setns",
    "mount", "umount2", "open_tree", "mount_setattr", "fsconfig", "open_by_handle_at",
    "io_uring_enter", "io_uring_register", "modify_ldt", "memfd_secret", "settimeofday",
    "clock_settime", "mbind", "set_mempolicy", "migrate_pages", "move_pages", "process_madvise",
    "clone(NEWUSER)", "unshare(NEWUSER)", "clone3", "personality(READ_IMPLIES_EXEC)",
    "personality(ADDR_NO_RANDOMIZE)", "sysfs", "ustat", "quotactl", "chroot",
}


def parse(text):
    """probe output -> {name: outcome}."""
    result = {}
    for line in text.splitlines():
        name, _, outcome = line.partition("\t")
        if outcome:
            result[name] = outcome
    return result


def run_in_sandbox(sb, *argv):
    path = attack.install(sb, "probe")
    r = sb.run([path, *argv], timeout=60)
    assert r.exit_code == 0, r
    return parse(r.stdout)


def run_on_host(*argv, unfiltered_sandbox_root=False):
    """The probe on the host, outside any sandbox. With
    `unfiltered_sandbox_root`, inside fresh namespaces (owned by a new user
    namespace) with the sandbox's capability set and no seccomp filter."""
    prefix = ["unshare", "-Urmpfnuic"] if unfiltered_sandbox_root else []
    caps = ["--sandbox-caps"] if unfiltered_sandbox_root else []
    out = subprocess.run(prefix + [attack.binary("probe")] + caps + list(argv), capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return parse(out)


@pytest.fixture(scope="module")
def surface(moatd):
    """Sandbox, unfiltered-namespace and host-root runs of `probe syscalls`."""
    sb = moatd_sandbox(moatd)
    try:
        inside = run_in_sandbox(sb, "syscalls")
    finally:
        sb.terminate()
    return inside, run_on_host("syscalls", unfiltered_sandbox_root=True), run_on_host("syscalls")


def moatd_sandbox(moatd):
    return attack.moat.Sandbox.create(socket=moatd.socket)


def table(names, *runs):
    return "\n".join("%-32s %s" % (n, "  ".join("%-12s" % r.get(n, "-") for r in runs)) for n in names)


def test_denied_syscalls_are_answered_by_the_filter(surface):
    """Attack: reach kernel code that has no business in a sandbox (bpf,
    io_uring, keyrings, userfaultfd, perf, module and kexec loading, the new
    mount API, nested namespaces, NUMA policy, clock setting...). Bound: every
    listed call returns EPERM (clone3: ENOSYS) in the sandbox, no process is
    killed, and for every call in MUST_BE_FILTER_PROVEN the unfiltered kernel
    answers the same root something else (EINVAL, EBADF, EFAULT, ok...): EPERM
    from seccomp, not from the kernel."""
    inside, unfiltered, host_root = surface
    print("name                             sandbox       unfiltered    host-root")
    print(table(sorted(EXPECTED), inside, unfiltered, host_root))
    wrong = {n: inside.get(n) for n, want in EXPECTED.items() if inside.get(n) != want}
    assert not wrong, "sandbox answers differ from the expected table: %s" % wrong
    proven = {n for n in EXPECTED if n in DENIED + ["clone3"] and unfiltered.get(n) not in (None, inside[n])}
    lost = MUST_BE_FILTER_PROVEN - proven
    assert not lost, "the unfiltered kernel also answers these like the sandbox, so the probe " \
                     "no longer proves the filter: %s" % {n: unfiltered.get(n) for n in lost}
    # Host root (no namespaces, all capabilities) never gets EPERM from any of
    # them: each probe reaches the kernel with arguments it rejects, so the
    # run on the host changed nothing.
    assert not [n for n in DENIED if host_root.get(n) == "EPERM" and n != "io_uring_setup"], host_root
    # Cap-gated only (the kernel would refuse them too): listed for the reader.
    print("also refused by the capability set:", sorted(set(DENIED) - proven))


def test_nested_user_namespace_is_refused_by_the_filter(surface):
    """Attack: unshare(CLONE_NEWUSER) / clone(CLONE_NEWUSER) to gain a full
    capability set over fresh namespaces (the route to the in-namespace
    nf_tables and mount bugs). Bound: EPERM in the sandbox, while the
    unfiltered kernel lets the same root do it (ok)."""
    inside, unfiltered, _ = surface
    for name in ("unshare(NEWUSER)", "clone(NEWUSER)"):
        assert unfiltered[name] == "ok", (name, unfiltered[name])
        assert inside[name] == "EPERM", (name, inside[name])


def test_other_syscall_abis_kill_the_process(sandbox):
    """Attack: bypass the x86_64 filter through another syscall table, the
    x32 numbering (nr | 0x40000000, same AUDIT_ARCH) or the i386 entry
    (int $0x80, AUDIT_ARCH_I386), e.g. to unshare(CLONE_NEWUSER) there.
    Bound: the process is killed by SIGSYS (seccomp KILL_PROCESS for a bad
    architecture), while the host answers ENOSYS (x32) and the x86_64 getpid
    still works in the sandbox. The i386 half needs a host where int $0x80
    works (CONFIG_IA32_EMULATION and not disabled at boot or by the
    hypervisor); where it faults on the host too, it is reported as skipped."""
    inside = run_in_sandbox(sandbox, "abi")
    host = run_on_host("abi")
    print(table(sorted(inside), inside, host))
    assert inside["x86_64:getpid"] == "ok"
    for name in ("x32:getpid", "x32:bpf"):
        assert host[name] == "ENOSYS", (name, host[name])  # reaches the kernel on the host
        assert inside[name] == "signal=%d" % SIGSYS, (name, inside[name])
    if host["i386:getpid"] != "ok":
        pytest.skip("int $0x80 does not work on this host (%s): the i386 path cannot be exercised"
                    % host["i386:getpid"])
    for name in ("i386:getpid", "i386:unshare(NEWUSER)"):
        assert inside[name] == "signal=%d" % SIGSYS, (name, inside[name])


AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17


def test_socket_families_outside_the_allowlist_are_refused(sandbox):
    """Attack: open a socket of a rarely used protocol family (packet, XDP,
    vsock, CAN, bluetooth, RDS, TIPC, ALG, ...) to reach its kernel code.
    Bound: for every family but AF_UNIX/INET/INET6/NETLINK, every type is EPERM
    from the filter (where the unfiltered kernel answers otherwise:
    EAFNOSUPPORT, ESOCKTNOSUPPORT, ok...); the four allowed families reach the
    kernel; raw INET/INET6 sockets fail (no CAP_NET_RAW)."""
    inside = run_in_sandbox(sandbox, "sockets")
    unfiltered = run_on_host("sockets", unfiltered_sandbox_root=True)
    assert len(inside) >= 4 * 40, "too few socket attempts: %d" % len(inside)
    allowed = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)
    leaked, proven = [], 0
    for name, outcome in sorted(inside.items()):
        family = int(name.split(":")[1])
        if family in allowed:
            continue
        if outcome != "EPERM":
            leaked.append((name, outcome))
        elif unfiltered.get(name) != "EPERM":
            proven += 1
    assert not leaked, "socket families reached the kernel: %s" % leaked
    # Most families are compiled in or answer EAFNOSUPPORT unfiltered: the
    # EPERM above is the filter's.
    assert proven >= 100, proven
    # The allowed families reach the kernel (not the filter's EPERM).
    for family in allowed:
        assert inside["socket:%d:DGRAM" % family] in ("ok", "ESOCKTNOSUPPORT", "EPROTONOSUPPORT")
    assert inside["socket:%d:STREAM" % AF_INET] == "ok"
    assert inside["socket:%d:STREAM" % AF_UNIX] == "ok"
    assert inside["socket:%d:RAW" % AF_NETLINK] == "ok"
    # Raw IP without CAP_NET_RAW: the kernel's EPERM (the filter allows the
    # family), while host root gets one.
    host = run_on_host("sockets")
    for name in ("socket:2:RAW:ICMP", "socket:10:RAW:ICMPV6"):
        assert host[name] == "ok", (name, host[name])
        assert inside[name] == "EPERM", (name, inside[name])
    assert host["socket:%d:RAW" % AF_PACKET] == "ok"
    assert inside["socket:%d:RAW" % AF_PACKET] == "EPERM"
