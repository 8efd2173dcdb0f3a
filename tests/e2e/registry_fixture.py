#!/usr/bin/python3
"""Real registries on 127.0.0.1 for pull tests.

Starts Debian's docker-registry three times over one storage directory:
  open   - no authentication (images are pushed here with skopeo)
  basic  - htpasswd (bcrypt through the stdlib crypt module)
  token  - JWT bearer tokens from a token server in this process, signed with
           a key and certificate made by the openssl CLI
and pushes OCI image layouts built here with tarfile + gzip + json + hashlib:

  test/img:1          an OCI index with linux/amd64 (2 layers) and linux/arm64
  test/img:single     the linux/amd64 manifest alone
  test/docker:1       the same image converted by skopeo to Docker schema 2
  test/armonly:1      an index with only linux/arm64
  test/corrupt:1      one layer whose bytes are then corrupted in storage
and a hostile fake registry (HostileRegistry) for the client's bounds.

Use as a module (Registries().start() / .close()) or as a program:
  registry_fixture.py serve
prints the path of an info JSON file on stdout, then serves until stdin
closes, and then stops every process and removes its temp dir.
Exit status 77 (skip) when docker-registry, skopeo or openssl is missing.
"""

import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings

REGISTRY_BINARY = "/usr/bin/docker-registry"
USERNAME, PASSWORD = "moat", "s3cret-pw"
TOKEN_SERVICE, TOKEN_ISSUER = "moat-test-registry", "moat-test-issuer"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def missing_tools():
    tools = (("docker-registry", REGISTRY_BINARY), ("skopeo", shutil.which("skopeo")),
             ("openssl", shutil.which("openssl")))
    return [name for name, path in tools if not path or not os.path.exists(path)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Layout:
    """An OCI image layout directory written from Python."""

    def __init__(self, path):
        self.path = path
        self.refs = []
        os.makedirs(os.path.join(path, "blobs", "sha256"))
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def blob(self, data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.path, "blobs", "sha256", digest[7:]), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def blob_path(self, digest):
        return os.path.join(self.path, "blobs", "sha256", digest[7:])

    def layer(self, files):
        """files: {path: bytes}. Returns (descriptor, diff_id)."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(content), 0o644, 1700000000
                tar.addfile(info, io.BytesIO(content))
        tar_bytes = raw.getvalue()
        return (self.blob(gzip.compress(tar_bytes, mtime=0), MEDIA_LAYER_GZIP),
                "sha256:" + hashlib.sha256(tar_bytes).hexdigest())

    def image(self, architecture, layers, env):
        """layers: list of {path: bytes}. Returns the manifest descriptor."""
        built = [self.layer(files) for files in layers]
        config = {
            "architecture": architecture, "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"Env": env, "WorkingDir": "/work", "Cmd": ["/bin/sh", "-c", "echo hi"]},
            "rootfs": {"type": "layers", "diff_ids": [d for _, d in built]},
        }
        manifest = {
            "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
            "config": self.blob(json.dumps(config).encode(), MEDIA_CONFIG),
            "layers": [descriptor for descriptor, _ in built],
        }
        descriptor = self.blob(json.dumps(manifest).encode(), MEDIA_MANIFEST)
        descriptor["platform"] = {"architecture": architecture, "os": "linux"}
        return descriptor

    def index(self, manifests):
        return self.blob(json.dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX,
                                     "manifests": manifests}).encode(), MEDIA_INDEX)

    def tag(self, descriptor, name):
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.refs.append(entry)
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.refs}, f)


class TokenServer:
    """The token endpoint of the distribution token-auth spec: basic
    credentials in, a JWT (RS256, x5c header) out, as {"access_token"}."""

    def __init__(self, workdir):
        self.key = os.path.join(workdir, "token-key.pem")
        self.cert = os.path.join(workdir, "token-cert.pem")
        self.log = os.path.join(workdir, "token-server.log")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        self.key, "-out", self.cert, "-days", "2", "-subj", "/CN=moat-test-token"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                authorization = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
                ok = authorization == expected
                with open(server.log, "a") as f:
                    f.write(json.dumps({"query": query, "authorized": ok}) + "\n")
                if not ok:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"access_token": server.sign(query.get("scope", [""])[0]),
                                   "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, scope):
        access = []
        parts = scope.split(":")
        if len(parts) >= 3 and parts[0] == "repository":
            access.append({"type": "repository", "name": ":".join(parts[1:-1]),
                           "actions": parts[-1].split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": TOKEN_ISSUER, "sub": USERNAME, "aud": TOKEN_SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = (b64url(json.dumps(header).encode()) + "." +
                         b64url(json.dumps(claims).encode())).encode()
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                                   input=signing_input, check=True, capture_output=True).stdout
        return signing_input.decode() + "." + b64url(signature)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class HostileRegistry:
    """A registry that misbehaves on purpose, one repository per way:
    big (manifest over 4 MiB), deep (JSON nested 200 deep), longblob (a blob
    longer than its descriptor), badchallenge (unterminated quoted string),
    evilrealm (a file:// token realm), badtoken (a token with CR LF),
    badmedia (a Helm chart config), baddigest (a digest with a path in it)."""

    def __init__(self):
        blob = b"x" * 100
        blob_digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        config = b'{"architecture":"amd64","os":"linux"}'
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()

        def manifest(config_type=MEDIA_CONFIG, layer_digest=blob_digest):
            return json.dumps({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                               "config": {"mediaType": config_type, "digest": config_digest,
                                          "size": len(config)},
                               "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": layer_digest,
                                           "size": len(blob)}]}).encode()

        port = self.port = free_port()
        answers = {
            "/v2/big/manifests/1": (200, {}, b" " * (5 << 20) + b"{}"),
            "/v2/deep/manifests/1": (200, {}, b"[" * 200 + b"]" * 200),
            "/v2/longblob/manifests/1": (200, {}, manifest()),
            f"/v2/longblob/blobs/{config_digest}": (200, {}, config),
            f"/v2/longblob/blobs/{blob_digest}": (200, {}, blob * 2),
            "/v2/badchallenge/manifests/1": (
                401, {"WWW-Authenticate": 'Bearer realm="http://127.0.0.1/t,service="x'}, b""),
            "/v2/evilrealm/manifests/1": (
                401, {"WWW-Authenticate": 'Bearer realm="file:///etc/passwd",service="x"'}, b""),
            "/v2/badtoken/manifests/1": (
                401, {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{port}/token"'}, b""),
            "/token": (200, {}, json.dumps({"token": "abc\r\nX-Injected: 1"}).encode()),
            "/v2/badmedia/manifests/1": (
                200, {}, manifest(config_type="application/vnd.cncf.helm.config.v1+json")),
            "/v2/baddigest/manifests/1": (200, {}, manifest(layer_digest="sha256:../../etc/passwd")),
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                status, headers, body = answers.get(urllib.parse.urlsplit(self.path).path,
                                                    (404, {}, b"{}"))
                self.send_response(status)
                self.send_header("Content-Type", MEDIA_MANIFEST if "/manifests/" in self.path
                                 else "application/octet-stream")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up on purpose

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Registries:
    def __init__(self):
        self.workdir = tempfile.mkdtemp(prefix="moat-registry-")
        self.processes = []
        self.token_server = None
        self.hostile = None
        self.info = {"workdir": self.workdir, "username": USERNAME, "password": PASSWORD}

    # -- processes --

    def _start_registry(self, name, auth):
        port = free_port()
        storage = os.path.join(self.workdir, "storage")
        config = os.path.join(self.workdir, f"{name}.yml")
        log = os.path.join(self.workdir, f"{name}.log")
        with open(config, "w") as f:
            # JSON is YAML: no YAML library needed.
            json.dump({"version": 0.1,
                       "log": {"level": "info", "accesslog": {"disabled": False}},
                       "storage": {"filesystem": {"rootdirectory": storage}},
                       "http": {"addr": f"127.0.0.1:{port}", "secret": "moat-test-secret"},
                       **({"auth": auth} if auth else {})}, f)
        with open(log, "wb") as out:
            process = subprocess.Popen([REGISTRY_BINARY, "serve", config], stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.processes.append(process)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # 401: it is up
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"registry {name} did not start; log: {open(log).read()}")
                time.sleep(0.1)
        self.info[name] = {"port": port, "log": log}
        return port

    def start(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self):
        open_port = self._start_registry("open", None)
        self.info["storage"] = os.path.join(self.workdir, "storage")
        self._build_and_push(open_port)

        htpasswd = os.path.join(self.workdir, "htpasswd")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # the registry only accepts bcrypt entries
            entry = crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))
        if not entry or not entry.startswith("$2"):
            raise RuntimeError("libcrypt has no bcrypt")
        with open(htpasswd, "w") as f:
            f.write(f"{USERNAME}:{entry}\n")
        self._start_registry("basic", {"htpasswd": {"realm": "moat-test", "path": htpasswd}})

        self.token_server = TokenServer(self.workdir)
        self._start_registry("token", {"token": {
            "realm": f"http://127.0.0.1:{self.token_server.port}/token",
            "service": TOKEN_SERVICE, "issuer": TOKEN_ISSUER,
            "rootcertbundle": self.token_server.cert}})
        self.info["token"]["token_log"] = self.token_server.log
        self.hostile = HostileRegistry()
        self.info["hostile"] = {"port": self.hostile.port}

    def close(self):
        if self.token_server:
            self.token_server.close()
        if self.hostile:
            self.hostile.close()
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- images --

    def _push(self, port, source, target, *extra):
        policy = os.path.join(self.workdir, "policy.json")
        if not os.path.exists(policy):
            with open(policy, "w") as f:
                json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        subprocess.run(["skopeo", "--policy", policy, "copy", "--quiet", "--dest-tls-verify=false",
                        *extra, source, f"docker://127.0.0.1:{port}/{target}"],
                       check=True, capture_output=True, env={**os.environ, "HOME": self.workdir})

    def _manifest_digest(self, port, repository, reference):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join([
                MEDIA_INDEX, MEDIA_MANIFEST,
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.docker.distribution.manifest.v2+json"])})
        with urllib.request.urlopen(request, timeout=10) as response:
            return "sha256:" + hashlib.sha256(response.read()).hexdigest()

    def _build_and_push(self, port):
        main = Layout(os.path.join(self.workdir, "layout-main"))
        amd64 = main.image("amd64", [
            {"bin/hello": b"#!/bin/sh\necho amd64\n", "data/one": os.urandom(300 * 1024)},
            {"work/two": os.urandom(200 * 1024)},
        ], ["PATH=/usr/bin:/bin", "MOAT_ARCH=amd64"])
        arm64 = main.image("arm64", [{"bin/hello": b"#!/bin/sh\necho arm64\n"}],
                           ["PATH=/usr/bin:/bin", "MOAT_ARCH=arm64"])
        main.tag(main.index([arm64, amd64]), "1")  # arm64 first: the client must choose
        main.tag(amd64, "single")
        self._push(port, f"oci:{main.path}:1", "test/img:1", "--all")
        self._push(port, f"oci:{main.path}:single", "test/img:single")
        self._push(port, f"oci:{main.path}:single", "test/docker:1", "--format", "v2s2")

        armonly = Layout(os.path.join(self.workdir, "layout-armonly"))
        arm_only = armonly.image("arm64", [{"bin/hello": b"arm only\n"}], ["MOAT_ARCH=arm64"])
        armonly.tag(armonly.index([arm_only]), "1")
        self._push(port, f"oci:{armonly.path}:1", "test/armonly:1", "--all")

        corrupt = Layout(os.path.join(self.workdir, "layout-corrupt"))
        corrupt_image = corrupt.image("amd64", [{"data/c": os.urandom(100 * 1024)}], ["X=1"])
        corrupt.tag(corrupt_image, "1")
        self._push(port, f"oci:{corrupt.path}:1", "test/corrupt:1")
        corrupt_manifest = json.load(open(corrupt.blob_path(corrupt_image["digest"])))
        corrupt_layer = corrupt_manifest["layers"][0]["digest"]
        data = os.path.join(self.info["storage"], "docker", "registry", "v2", "blobs", "sha256",
                            corrupt_layer[7:9], corrupt_layer[7:], "data")
        with open(data, "r+b") as f:  # same size, different bytes
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0xFF]))

        amd64_manifest = json.load(open(main.blob_path(amd64["digest"])))
        self.info["images"] = {
            "layout": main.path,
            "amd64_manifest": amd64["digest"],
            "arm64_manifest": arm64["digest"],
            "amd64_config": amd64_manifest["config"]["digest"],
            "amd64_layers": [{"digest": layer["digest"], "size": layer["size"],
                              "path": main.blob_path(layer["digest"])}
                             for layer in amd64_manifest["layers"]],
            "index_digest": self._manifest_digest(port, "test/img", "1"),
            "single_digest": self._manifest_digest(port, "test/img", "single"),
            "docker_digest": self._manifest_digest(port, "test/docker", "1"),
            "corrupt_layer": corrupt_layer,
        }


def main():
    if len(sys.argv) != 2 or sys.argv[1] != "serve":
        print(__doc__, file=sys.stderr)
        return 2
    missing = missing_tools()
    if missing:
        print(f"skip: missing {', '.join(missing)}", file=sys.stderr)
        return 77
    registries = Registries().start()
    try:
        info_path = os.path.join(registries.workdir, "info.json")
        with open(info_path, "w") as f:
            json.dump(registries.info, f, indent=1)
        print(info_path, flush=True)
        sys.stdin.read()  # until the test closes its end
    finally:
        registries.close()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main())
