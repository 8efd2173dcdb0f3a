"""Resource limits hold and are reported: memory (OOM), pids (fork bomb),
exec and sandbox timeouts."""

import os
import time

import moat
import pytest

from moatd_harness import find_sandbox_cgroups


def test_memory_hog_is_oom_killed_and_reported(moatd):
    with moat.Sandbox.create(memory=64, socket=moatd.socket) as sb:
        p = sb.exec("python3", "-c",
                    "hog = []\n"
                    "while True:\n"
                    "    hog.append(bytearray(1 << 20))\n",
                    stdin=False)
        code = p.wait(timeout=60)
        assert code == 137
        assert p.oom_killed
        info = sb.refresh().info
        # The sandbox itself survives an OOM kill of one process.
        assert info["state"] == "running", info


def test_fork_bomb_is_stopped_by_pids_limit(moatd):
    with moat.Sandbox.create(pids=64, socket=moatd.socket) as sb:
        bomb = sb.exec("python3", "-c",
                       "import os\n"
                       "while True:\n"
                       "    try:\n"
                       "        os.fork()\n"
                       "    except OSError:\n"
                       "        pass\n",
                       stdin=False, timeout=30)
        time.sleep(1.0)  # let it hit the limit
        latencies = []
        for _ in range(5):
            start = time.monotonic()
            moatd.healthy(timeout=5)
            latencies.append(time.monotonic() - start)
            time.sleep(0.3)
        assert max(latencies) < 1.0, latencies
        cgroups = [d for d in find_sandbox_cgroups(moatd.moat_dirs(), sb.id)
                   if os.path.exists(os.path.join(d, "pids.max"))]
        assert cgroups, "no pids cgroup found for %s under %s" % (sb.id, moatd.moat_dirs())
        for d in cgroups:
            with open(os.path.join(d, "pids.current")) as f:
                assert int(f.read()) <= 64
            with open(os.path.join(d, "pids.events")) as f:
                events = dict(line.split() for line in f)
            assert int(events.get("max", 0)) > 0, events
        # moatd can still tear it down promptly.
        start = time.monotonic()
        sb.terminate()
        assert time.monotonic() - start < 10
        assert bomb.id


def test_exec_timeout_fires(sandbox):
    p = sandbox.exec("sleep", "100", timeout=1, stdin=False)
    start = time.monotonic()
    assert p.wait(timeout=30) == 124
    assert p.timed_out
    assert time.monotonic() - start < 10


def test_sandbox_timeout_fires(moatd):
    sb = moat.Sandbox.create(timeout=2, socket=moatd.socket)
    try:
        start = time.monotonic()
        sb.wait(timeout=30)
        assert sb.state == "stopped"
        assert sb.end_reason == "timeout"
        assert 1.5 <= time.monotonic() - start < 15
        with pytest.raises(moat.SandboxNotRunning):
            sb.exec("true")
    finally:
        sb.terminate()


def test_limits_land_in_the_sandbox_cgroups(moatd):
    """cpu, memory (with swap) and pids reach the kernel, v1 or v2, in the
    sandbox's own cgroups under moatd's."""
    import os
    from moatd_harness import find_sandbox_cgroups, moat

    def read(directory, name):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return f.read().strip()

    with moat.Sandbox.create(cpu=0.5, memory=96, pids=77, socket=moatd.socket) as sb:
        dirs = find_sandbox_cgroups(moatd.moat_dirs(), sb.id)
        assert dirs, "no cgroup of %s under %s" % (sb.id, moatd.moat_dirs())
        values = {}
        for d in dirs:
            for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max",
                         "memory.swap.max", "pids.max", "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max"):
                value = read(d, name)
                if value is not None:
                    values[name] = value
        memory = 96 * 1024 * 1024
        if "memory.max" in values:  # v2
            assert int(values["memory.max"]) == memory
            assert values.get("memory.swap.max") in ("0", None)
            quota, period = values["cpu.max"].split()
            assert int(quota) * 2 == int(period)
        else:  # v1
            assert int(values["memory.limit_in_bytes"]) == memory
            if "memory.memsw.limit_in_bytes" in values:
                assert int(values["memory.memsw.limit_in_bytes"]) == memory
            assert int(values["cpu.cfs_quota_us"]) * 2 == int(values["cpu.cfs_period_us"])
        assert values["pids.max"] == "77"
        # And the process really runs inside them.
        p = sb.exec("sleep", "30")
        procs = set()
        for d in dirs:
            procs.update(int(x) for x in (read(d, "cgroup.procs") or "").split())
        assert len(procs) >= 2  # init and sleep
        p.kill()
