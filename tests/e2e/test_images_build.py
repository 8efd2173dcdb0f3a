"""POST /v1/images/build through `moat image build` and raw requests: steps,
the step cache, failures, the build context's confinement, and a Debian
build with apt. One real moatd for the module (moatd_harness)."""

import base64
import io
import json
import os
import subprocess
import tarfile
import time

import pytest

import moatd_harness
from moatd_harness import moat


def moat_cli(moatd, *args, timeout=600):
    binary = os.path.join(moatd_harness.build_dir(), "src", "cli", "moat")
    return subprocess.run([binary, "--socket", moatd.socket, *args], capture_output=True, text=True,
                          timeout=timeout)


def build_raw(moatd, body, timeout=600):
    """POST /v1/images/build; returns (status, [events]) (one error object
    for a non-200 answer)."""
    conn = moatd_harness.moat._transport.UnixHTTPConnection(moatd.socket, timeout=timeout)
    try:
        data = json.dumps(body).encode()
        conn.request("POST", "/v1/images/build", body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read().decode()
    finally:
        conn.close()
    if resp.status != 200:
        return resp.status, [json.loads(text)]
    return resp.status, [json.loads(line) for line in text.splitlines() if line.strip()]


def tar_of(entries):
    """A context tar: entries are (name, bytes | None for a dir | ("link", target))."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return base64.b64encode(buffer.getvalue()).decode()


def images_dir(moatd):
    return os.path.join(moatd.data_dir, "images")


def staging_leftovers(moatd):
    found = []
    for root, dirs, _files in os.walk(images_dir(moatd)):
        found += [os.path.join(root, d) for d in dirs if d.startswith(".tmp")]
        dirs[:] = [d for d in dirs if not d.startswith(".tmp") and d != "rootfs"]
    return found


def image_exists(moatd, ref):
    try:
        moat.Client(moatd.socket).request("GET", "/v1/images/" + ref.replace("/", "%2F").replace(":", "%3A"))
        return True
    except moat.NotFound:
        return False


def run_in(moatd, image, *argv):
    sb = moat.Sandbox.create(image=image, socket=moatd.socket)
    try:
        p = sb.exec(*argv)
        out, code = p.stdout.read(), p.wait(timeout=60)
        return out, code
    finally:
        sb.terminate()


@pytest.fixture
def context(tmp_path):
    """A build context: a file, a directory with a nested file and an
    executable, and a Dockerfile using every instruction."""
    ctx = tmp_path / "ctx"
    (ctx / "conf" / "nested").mkdir(parents=True)
    (ctx / "hello.txt").write_text("hello from the context\n")
    (ctx / "conf" / "a.conf").write_text("a=1\n")
    (ctx / "conf" / "nested" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    os.chmod(ctx / "conf" / "nested" / "run.sh", 0o755)
    (ctx / "conf" / "private").write_text("only root reads this\n")
    os.chmod(ctx / "conf" / "private", 0o600)
    (ctx / "Dockerfile").write_text(
        "# every instruction\n"
        "FROM host\n"
        "ENV GREETING=\"hi there\" \\\n"
        "    LEVEL=3\n"
        "RUN mkdir -p /opt/made && echo \"$GREETING\" > /opt/made/greeting\n"
        "COPY hello.txt /opt/hello.txt\n"
        "COPY conf /etc/myconf/\n"
        "WORKDIR /opt/made\n"
        "RUN [\"sh\", \"-c\", \"pwd > where\"]\n"
        "USER nobody\n")
    return ctx


def test_build_with_every_instruction_then_cache(moatd, context):
    started = time.monotonic()
    done = moat_cli(moatd, "image", "build", "-f", str(context / "Dockerfile"), "--name", "built:1", str(context))
    first = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    image_id = done.stdout.strip()
    assert image_id.startswith("img-"), done.stdout
    assert "step 1/7 ENV GREETING=hi there LEVEL=3" in done.stderr, done.stderr
    assert "step 2/7 RUN mkdir" in done.stderr and "cached" not in done.stderr, done.stderr

    info = moat.Client(moatd.socket).request("GET", "/v1/images/built%3A1")
    assert info["id"] == image_id
    assert info["config"]["workdir"] == "/opt/made"
    assert info["config"]["user"] == "nobody"
    assert "GREETING=hi there" in info["config"]["env"] and "LEVEL=3" in info["config"]["env"]

    out, code = run_in(moatd, "built:1", "sh", "-c",
                       "id -un; pwd; echo $GREETING/$LEVEL; cat /opt/made/greeting /opt/made/where "
                       "/opt/hello.txt /etc/myconf/a.conf; /etc/myconf/nested/run.sh; "
                       "stat -c '%a %u:%g %n' /opt/hello.txt /etc/myconf/nested/run.sh /etc/myconf/private /etc/myconf; "
                       "cat /etc/myconf/private 2>/dev/null || echo not readable")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[:9] == ["nobody", "/opt/made", "hi there/3", "hi there", "/opt/made",
                         "hello from the context", "a=1", "ran", "644 0:0 /opt/hello.txt"], out
    assert lines[9:] == ["755 0:0 /etc/myconf/nested/run.sh", "600 0:0 /etc/myconf/private", "755 0:0 /etc/myconf",
                         "not readable"], out

    # Unchanged: every step comes from the cache, and it is quick.
    started = time.monotonic()
    again = moat_cli(moatd, "image", "build", "-f", str(context / "Dockerfile"), "--name", "built:1", str(context))
    cached = time.monotonic() - started
    print("first build %.2fs, fully cached rebuild %.2fs" % (first, cached))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == image_id
    assert again.stderr.count(" cached ") == 7, again.stderr
    assert "  | " not in again.stderr  # nothing ran
    assert cached < 2.0, cached

    # Only the last step changed: only it runs.
    dockerfile = (context / "Dockerfile").read_text().replace("USER nobody", "USER 1000:1000")
    (context / "Dockerfile").write_text(dockerfile)
    third = moat_cli(moatd, "image", "build", "--name", "built:2", str(context))  # -f defaults to CONTEXT/Dockerfile
    assert third.returncode == 0, third.stderr
    assert third.stderr.count(" cached ") == 6, third.stderr
    assert "step 7/7 USER 1000:1000" in third.stderr, third.stderr
    assert third.stdout.strip() != image_id

    # Changed file content: the copy step and everything after run again.
    (context / "hello.txt").write_text("changed\n")
    fourth = moat_cli(moatd, "image", "build", "--name", "built:3", str(context))
    assert fourth.returncode == 0, fourth.stderr
    assert fourth.stderr.count(" cached ") == 2, fourth.stderr
    out, code = run_in(moatd, "built:3", "cat", "/opt/hello.txt")
    assert (out, code) == ("changed\n", 0)
    assert staging_leftovers(moatd) == []


def test_failing_run_leaves_nothing(moatd, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM host\nRUN echo before-failing\nRUN echo out; exit 7\n")
    done = moat_cli(moatd, "image", "build", "--name", "broken:1", str(tmp_path))
    assert done.returncode == 125, (done.returncode, done.stderr)
    assert "  | out" in done.stderr
    assert "step 2/2 RUN echo out; exit 7" in done.stderr and "code 7" in done.stderr, done.stderr
    assert "build_step_failed" in done.stderr
    assert done.stdout == ""
    assert not image_exists(moatd, "broken:1")
    assert staging_leftovers(moatd) == []

    status, events = build_raw(moatd, {"name": "broken:2", "from": "host", "steps": [{"run": "exit 3"}]})
    assert status == 200
    assert events[-1]["error"]["code"] == "build_step_failed" and events[-1]["step"] == 0
    assert "code 3" in events[-1]["error"]["message"]
    assert not any("image" in e and "step" not in e for e in events)
    assert not image_exists(moatd, "broken:2")
    assert staging_leftovers(moatd) == []


def layer_count(moatd):
    return len(os.listdir(os.path.join(images_dir(moatd), "layers")))


@pytest.mark.parametrize("src, entries", [
    ("../x", [("x", b"x")]),
    ("/etc/passwd", [("x", b"x")]),
    ("link", [("link", ("link", "/etc/passwd"))]),
    ("link/shadow", [("link", ("link", "/etc"))]),
    ("dir/up", [("dir", None), ("dir/up", ("link", "../../../../etc/passwd"))]),
])
def test_copy_source_escaping_the_context(moatd, src, entries):
    layers = layer_count(moatd)
    status, events = build_raw(moatd, {"name": "escape:1", "from": "host", "context": tar_of(entries),
                                       "steps": [{"copy": {"src": src, "dest": "/stolen"}}]})
    assert status in (200, 400), events
    assert "error" in events[-1], events
    assert not image_exists(moatd, "escape:1")
    assert layer_count(moatd) == layers  # no layer written
    assert staging_leftovers(moatd) == []


def test_cli_refuses_sources_outside_the_context(moatd, tmp_path):
    (tmp_path / "outside").write_text("secret\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    os.symlink("../outside", ctx / "escape")
    for line, message in [("COPY ../outside /x", "outside the build context"),
                          ("COPY /etc/passwd /x", "is absolute"),
                          ("COPY escape /x", "symlink"),
                          ("ADD x /y", "use COPY"),
                          ("COPY --chown=1 a /x", "--chown")]:
        (ctx / "Dockerfile").write_text("FROM host\n" + line + "\n")
        done = moat_cli(moatd, "image", "build", "--name", "refused:1", str(ctx))
        assert done.returncode == 125 and message in done.stderr and "line 2" in done.stderr, done.stderr
    assert not image_exists(moatd, "refused:1")


@pytest.mark.parametrize("body", [
    {"name": "bad:1", "from": "host", "steps": [{"frobnicate": "x"}]},
    {"name": "bad:1", "from": "host", "steps": [{"run": "true", "user": "x"}]},
    {"name": "bad:1", "from": "host", "steps": [{"run": 5}]},
    {"name": "bad:1", "from": "host", "steps": [{"apt_install": ["Bad;rm -rf /"]}]},
    {"name": "bad:1", "from": "host", "steps": [{"env": {"1X": "y"}}]},
    {"name": "bad:1", "from": "host", "steps": [{"workdir": "relative"}]},
    {"name": "bad:1", "from": "host", "steps": [{"copy": {"src": "a"}}]},
    {"name": "bad:1", "from": "host", "steps": [{"run": "true"}] * 51},
    {"name": "Bad Name", "from": "host", "steps": []},
    {"name": "../x", "from": "host", "steps": []},
    {"name": "host", "from": "host", "steps": []},
    {"name": "img-0123", "from": "host", "steps": []},
    {"name": "bad:1", "from": "../etc", "steps": []},
    {"name": "bad:1", "from": "host", "steps": {}},
    {"name": "bad:1", "from": "host", "steps": [], "extra": 1},
    {"name": "bad:1", "from": "host", "steps": [], "context": "not base64!"},
])
def test_bad_specs_are_400(moatd, body):
    status, events = build_raw(moatd, body)
    assert status == 400, events
    assert events[0]["error"]["code"] == "invalid_argument"
    assert not image_exists(moatd, "bad:1")


def test_fifty_steps_are_fine(moatd):
    steps = [{"env": {"N%d" % i: str(i)}} for i in range(50)]
    status, events = build_raw(moatd, {"name": "fifty:1", "from": "host", "steps": steps})
    assert status == 200 and "image" in events[-1], events[-3:]
    assert "N49=49" in events[-1]["image"]["config"]["env"]


def test_debian_with_apt_install(moatd, tmp_path):
    """FROM debian:bookworm-slim + apt-get install jq, through the host's
    Debian mirror. Slow only the first time on a host: the debootstrap base
    is kept in /var/cache/moat/debian. Runs in `make test` (no skip mark)."""
    (tmp_path / "Dockerfile").write_text(
        "FROM debian:bookworm-slim\n"
        "RUN apt-get update -q && apt-get install -y -q --no-install-recommends jq && rm -rf /var/lib/apt/lists/*\n"
        "ENV JQ_FILTER=.a\n")
    started = time.monotonic()
    done = moat_cli(moatd, "image", "build", "--name", "withjq:1", str(tmp_path), timeout=1800)
    print("debian build %.1fs" % (time.monotonic() - started))
    assert done.returncode == 0, done.stderr[-4000:]
    out, code = run_in(moatd, "withjq:1", "sh", "-c", "echo '{\"a\": 42}' | jq $JQ_FILTER; cat /etc/debian_version")
    assert code == 0, out
    assert out.splitlines()[0] == "42" and out.splitlines()[1].startswith("12"), out

    # The same through the apt_install step kind (the SDK's path).
    status, events = build_raw(moatd, {"name": "withjq:2", "from": "debian:bookworm-slim",
                                       "steps": [{"apt_install": ["jq"]}]}, timeout=1800)
    assert status == 200 and "image" in events[-1], events[-5:]
    assert any("jq" in e.get("log", "") for e in events)
    out, code = run_in(moatd, "withjq:2", "jq", "-n", "1+1")
    assert (out, code) == ("2\n", 0)
