"""The SDK against a real moatd."""

import time

import pytest

import moat


def test_streaming_lines_arrive_as_produced(sandbox):
    p = sandbox.exec("sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done")
    start = time.monotonic()
    seen = []
    for line in p.stdout:
        seen.append((line, time.monotonic() - start))
    assert [line for line, _ in seen] == ["line 1\n", "line 2\n", "line 3\n"]
    # The first line came before the process finished: streamed, not buffered.
    assert seen[0][1] < seen[-1][1] - 0.3
    assert p.wait() == 0
    assert p.returncode == 0


def test_stdin_round_trip_with_cat(sandbox):
    p = sandbox.exec("cat")
    assert p.returncode is None
    p.stdin.write(b"hello ")
    p.stdin.write("wörld\n")
    p.stdin.write_eof()
    assert p.stdout.read() == "hello wörld\n"
    assert p.wait(timeout=30) == 0
    with pytest.raises(moat.StdinClosed):
        p.stdin.write(b"late")


def test_large_stdin_round_trip(sandbox):
    data = bytes(range(256)) * 12288  # 3 MiB: more than one request's worth
    p = sandbox.exec("sha256sum", text=True)
    p.stdin.write(data)
    p.stdin.close()
    import hashlib
    assert p.stdout.read().split()[0] == hashlib.sha256(data).hexdigest()
    assert p.wait(timeout=30) == 0


def test_stderr_is_separate_and_read_independently(sandbox):
    # 200 KiB on stderr before anything on stdout: reading stdout first must
    # not deadlock, because stderr has its own request.
    p = sandbox.exec("sh", "-c", "head -c 204800 /dev/zero | tr '\\0' e >&2; echo out",
                     stdin=False)
    assert p.stdout.read() == "out\n"
    err = p.stderr.read()
    assert err == "e" * 204800
    assert p.wait(timeout=30) == 0


def test_bytes_mode(sandbox):
    p = sandbox.exec("printf", "\\377\\000a", text=False, stdin=False)
    assert p.stdout.read() == b"\xff\x00a"
    assert p.wait() == 0


def test_exit_codes_signal_kill_poll(sandbox):
    assert sandbox.exec("sh", "-c", "exit 7", stdin=False).wait(timeout=30) == 7
    p = sandbox.exec("sleep", "60", stdin=False)
    assert p.poll() is None
    assert isinstance(p.pid, int) and p.pid > 1
    assert p.id.startswith("ex-")
    p.signal(15)
    assert p.wait(timeout=30) == 128 + 15
    p = sandbox.exec("sleep", "60", stdin=False)
    p.kill()
    assert p.wait(timeout=30) == 137
    assert p.poll() == 137


def test_process_wait_timeout_raises(sandbox):
    p = sandbox.exec("sleep", "30", stdin=False)
    with pytest.raises(moat.Timeout):
        p.wait(timeout=1)
    p.kill()
    p.wait(timeout=30)


def test_run_str_list_stdin(sandbox):
    r = sandbox.run("echo $((6*7)); echo oops >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == ("42\n", "oops\n", 3)
    r = sandbox.run(["printf", "%s", "a b"])
    assert r.stdout == "a b" and r.exit_code == 0 and r.ok
    r = sandbox.run("tr a-z A-Z", stdin="shout")
    assert r.stdout == "SHOUT"
    r = sandbox.run(["sh", "-c", "echo $K $PWD"], env={"K": "v"}, workdir="/tmp")
    assert r.stdout == "v /tmp\n"
    r = sandbox.run("printf '\\377'")
    assert r.stdout_bytes == b"\xff"
    r = sandbox.run(["sleep", "30"], timeout=1)
    assert r.exit_code == 124 and r.timed_out


def test_exec_env_workdir(sandbox):
    p = sandbox.exec("sh", "-c", "echo $GREETING; pwd", env={"GREETING": "hi"}, workdir="/tmp",
                     stdin=False)
    assert p.stdout.read() == "hi\n/tmp\n"


def test_entrypoint_sandbox(sock):
    sb = moat.Sandbox.create("sh", "-c", "echo from-entrypoint; echo err >&2; exit 5", socket=sock)
    try:
        assert sb.stdout.read() == "from-entrypoint\n"
        assert sb.stderr.read() == "err\n"
        assert sb.wait(timeout=30) == 5
        assert sb.returncode == 5
        assert sb.state == "stopped" and sb.end_reason == "exited"
        assert sb.poll() == 5
    finally:
        sb.terminate()


def test_no_entrypoint_stdout_is_an_error(sandbox):
    with pytest.raises(moat.InvalidArgument):
        sandbox.stdout.read()


def test_exceptions_from_the_server(sock):
    with pytest.raises(moat.NotFound):
        moat.Sandbox.from_id("sb-0000000000000000")
    with pytest.raises(moat.InvalidArgument):
        moat.Sandbox.create(memory=1)
    with pytest.raises(moat.InvalidArgument):
        moat.Sandbox.create(env={"1X": "y"})
    with moat.Sandbox.create() as sb:
        with pytest.raises(moat.ExecNotFound) as info:
            sb.exec("/definitely/not/here")
        assert info.value.status == 404
    sb = moat.Sandbox.create(timeout=1)
    try:
        sb.wait(timeout=30)
        with pytest.raises(moat.SandboxNotRunning):
            sb.exec("true")
        with pytest.raises(moat.SandboxTerminated):
            sb.run("true")
    finally:
        sb.terminate()
    with pytest.raises(moat.NotFound):
        sb.refresh()


def test_from_id_list_by_tag_and_terminate(sock):
    a = moat.Sandbox.create(tags={"suite": "sdk", "who": "a"})
    b = moat.Sandbox.create(tags={"suite": "sdk", "who": "b"})
    try:
        same = moat.Sandbox.from_id(a.id)
        assert same.id == a.id and same.tags == {"suite": "sdk", "who": "a"}
        assert same.state == "running" and same.image == "host" and same.created_at
        assert {s.id for s in moat.Sandbox.list(tags={"suite": "sdk"})} == {a.id, b.id}
        assert [s.id for s in moat.Sandbox.list(tags={"suite": "sdk", "who": "b"})] == [b.id]
        assert moat.Sandbox.list(tags={"suite": "nope"}) == []
        a.terminate()
        assert a.state == "stopped"
        assert [s.id for s in moat.Sandbox.list(tags={"suite": "sdk"})] == [b.id]
        with pytest.raises(moat.NotFound):
            moat.Sandbox.from_id(a.id)
        a.terminate()  # idempotent
    finally:
        a.terminate()
        b.terminate()


def test_context_manager_terminates(sock):
    with moat.Sandbox.create() as sb:
        assert sb.run("true").exit_code == 0
    with pytest.raises(moat.NotFound):
        moat.Sandbox.from_id(sb.id)


def test_processes_listing(sandbox):
    p = sandbox.exec("true", stdin=False, tag="mine")
    p.wait(timeout=30)
    assert p.id in {q.id for q in sandbox.processes()}
