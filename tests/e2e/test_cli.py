"""The `moat` CLI against a real moatd: exit codes, streaming, --json, the
commands a user types first."""

import json
import os
import subprocess

import moatd_harness


def moat_cli(moatd, *args, input=None, timeout=60):
    binary = os.path.join(moatd_harness.build_dir(), "src", "cli", "moat")
    return subprocess.run([binary, "--socket", moatd.socket, *args], input=input,
                          capture_output=True, timeout=timeout)


def sandbox_ids(moatd):
    listed = json.loads(moat_cli(moatd, "ls", "--json").stdout)
    if isinstance(listed, dict):
        listed = listed["sandboxes"]
    return [s["id"] for s in listed]


def test_run_streams_and_exits_with_the_commands_code(moatd):
    done = moat_cli(moatd, "run", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert done.returncode == 7, done
    assert done.stdout == b"out\n" and done.stderr == b"err\n"
    # run removes its sandbox
    assert sandbox_ids(moatd) == []


def test_run_missing_executable_is_127(moatd):
    done = moat_cli(moatd, "run", "--", "/no/such/binary")
    assert done.returncode == 127, done
    assert b"exec_not_found" in done.stderr


def test_create_exec_inspect_ls_rm(moatd):
    created = moat_cli(moatd, "create", "--memory", "128", "--tag", "cli=1", "-e", "GREETING=hi")
    assert created.returncode == 0, created
    sandbox_id = created.stdout.decode().strip()
    assert sandbox_id.startswith("sb-")
    try:
        done = moat_cli(moatd, "exec", sandbox_id, "--", "sh", "-c", 'echo "$GREETING"; exit 3')
        assert done.returncode == 3 and done.stdout == b"hi\n", done
        done = moat_cli(moatd, "exec", "-i", sandbox_id, "--", "cat", input=b"piped\n")
        assert done.returncode == 0 and done.stdout == b"piped\n", done
        info = json.loads(moat_cli(moatd, "inspect", sandbox_id).stdout)
        assert info["id"] == sandbox_id and info["state"] == "running" and info["memory"] == 128
        listed = moat_cli(moatd, "ls", "--tag", "cli=1")
        assert sandbox_id.encode() in listed.stdout
        assert sandbox_id.encode() not in moat_cli(moatd, "ls", "--tag", "cli=2").stdout
    finally:
        removed = moat_cli(moatd, "rm", sandbox_id)
    assert removed.returncode == 0, removed
    gone = moat_cli(moatd, "inspect", sandbox_id)
    assert gone.returncode != 0 and b"not_found" in gone.stderr


def test_bad_flags_and_unknown_ids(moatd):
    assert moat_cli(moatd, "run", "--memory", "lots", "--", "true").returncode == 2
    assert moat_cli(moatd, "frobnicate").returncode == 2
    done = moat_cli(moatd, "rm", "sb-0000000000000000")
    assert done.returncode != 0 and b"not_found" in done.stderr
    done = moat_cli(moatd, "run", "--memory", "1", "--", "true")
    assert done.returncode == 125 and b"invalid_argument" in done.stderr, done


def test_exec_timeout_is_124(moatd):
    created = moat_cli(moatd, "create")
    sandbox_id = created.stdout.decode().strip()
    try:
        done = moat_cli(moatd, "exec", "--timeout", "1", sandbox_id, "--", "sleep", "30")
        assert done.returncode == 124, done
    finally:
        moat_cli(moatd, "rm", sandbox_id)


def test_doctor_passes_on_this_host(moatd):
    done = moat_cli(moatd, "doctor")
    assert done.returncode == 0, done
    for check in (b"user_namespaces", b"idmapped_mounts", b"overlayfs", b"seccomp", b"cgroups",
                  b"pivot_root", b"network_namespaces"):
        assert check in done.stdout


def test_moatd_refuses_to_start_on_a_host_it_cannot_use(tmp_path):
    """The start-up checks are `moat doctor`'s: without root, moatd says what
    fails and how to fix it, and exits instead of failing later in a create."""
    binary = os.path.join(moatd_harness.build_dir(), "src", "daemon", "moatd")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", binary,
                           "--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
                           "--socket", str(tmp_path / "s.sock")],
                          capture_output=True, timeout=30)
    assert done.returncode != 0
    text = done.stderr.decode()
    assert "root" in text and "fail" in text.lower(), text
    assert not (tmp_path / "s.sock").exists()
