"""Host events must not reach a sandbox.

The sandbox's network namespace is made by moatd, so the host's user
namespace owns it, and the kernel broadcasts untagged uevents (block and loop
devices: other sandboxes' volumes, the host's disks) to every such
namespace. The filter refuses NETLINK_KOBJECT_UEVENT sockets, so a workload
cannot listen to them.
"""
import subprocess
import threading
import time

LISTEN = (
    "import socket, errno\n"
    "try:\n"
    "    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)\n"  # NETLINK_KOBJECT_UEVENT
    "    s.bind((0, 1))\n"
    "except OSError as e:\n"
    "    print('refused', errno.errorcode[e.errno]); raise SystemExit\n"
    "s.settimeout(3)\n"
    "try:\n"
    "    while True:\n"
    "        print('event', s.recv(65536)[:60])\n"
    "except OSError:\n"
    "    print('quiet')\n"
)


def _loop_device_events(tmp_path):
    """Attach and detach a loop device on the host: untagged block uevents."""
    image = tmp_path / "uevent.img"
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    time.sleep(1.0)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                            check=True).stdout.strip()
    subprocess.run(["losetup", "-d", device], check=True)


def test_uevent_socket_is_refused(sandbox, tmp_path):
    """Attack: listen to the host's kobject uevents from inside. Bound: the
    socket is refused with EPROTONOSUPPORT and no event is ever printed,
    while the host attaches and detaches a loop device."""
    poke = threading.Thread(target=_loop_device_events, args=(tmp_path,))
    poke.start()
    try:
        result = sandbox.run(["python3", "-c", LISTEN])
    finally:
        poke.join()
    assert result.exit_code == 0, result.stderr
    assert "event" not in result.stdout, "host uevents reached the sandbox: " + result.stdout
    assert result.stdout.strip() == "refused EPROTONOSUPPORT", result.stdout


def test_uevents_do_reach_a_listener_on_the_host(tmp_path):
    """The same listener on the host sees the loop device's events: proves
    the attack above would have observed them had the socket opened."""
    poke = threading.Thread(target=_loop_device_events, args=(tmp_path,))
    poke.start()
    try:
        done = subprocess.run(["/usr/bin/python3", "-c", LISTEN], capture_output=True, text=True, timeout=30)
    finally:
        poke.join()
    assert "event" in done.stdout and "loop" in done.stdout, done.stdout


NETLINK_PROTOCOLS = (
    "import socket, errno\n"
    "for p in range(32):\n"
    "    try:\n"
    "        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, p).close(); print(p, 'ok')\n"
    "    except OSError as e:\n"
    "        print(p, errno.errorcode[e.errno])\n"
)


def test_only_route_and_sock_diag_netlink(sandbox):
    """Attack surface: every netlink protocol but NETLINK_ROUTE (0) and
    NETLINK_SOCK_DIAG (4) is refused by the filter (EPROTONOSUPPORT), while
    the host's kernel offers several of them (so the refusal is the filter's).
    `ip addr` and `ss` still work."""
    inside = dict(line.split() for line in sandbox.run(["python3", "-c", NETLINK_PROTOCOLS]).stdout.splitlines())
    assert {p for p, r in inside.items() if r == "ok"} == {"0", "4"}, inside
    assert all(r == "EPROTONOSUPPORT" for p, r in inside.items() if p not in ("0", "4")), inside
    host = dict(line.split() for line in subprocess.run(["/usr/bin/python3", "-c", NETLINK_PROTOCOLS],
                                                        capture_output=True, text=True).stdout.splitlines())
    opened_on_host = {p for p, r in host.items() if r == "ok"}
    assert {"9", "12", "15", "16"} <= opened_on_host, host  # audit, netfilter, uevent, generic
    tools = sandbox.run("ip -br addr && ss -tan | head -1")
    assert tools.exit_code == 0 and "lo" in tools.stdout, tools
