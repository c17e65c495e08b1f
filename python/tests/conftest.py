"""Fixtures of the Python suite: a temp cache per test, real SIF files from `siftool`, and
one real registry (Debian's `docker-registry` on a free loopback port) for the session."""

import os
import shutil
import socket
import subprocess
import time

import pytest

import sregistry


def _run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def cache(tmp_path):
    """A fresh cache in a temp dir."""
    return sregistry.Cache(tmp_path / "cache")


@pytest.fixture
def make_sif(tmp_path):
    """make_sif(name, payload): a real SIF file (a definition and a squashfs system
    partition, amd64) made with siftool and mksquashfs."""

    def make(name, payload):
        work = tmp_path / (name + ".d")
        root = work / "root"
        root.mkdir(parents=True)
        (root / "payload.txt").write_text(payload)
        sqfs = work / "fs.sqfs"
        _run("mksquashfs", str(root), str(sqfs), "-noappend", "-quiet", "-all-root")
        definition = work / "def"
        definition.write_text("Bootstrap: scratch\n# %s\n" % payload)
        out = tmp_path / name
        _run("siftool", "new", str(out))
        _run("siftool", "add", "--datatype", "1", str(out), str(definition))
        _run(
            "siftool", "add", "--datatype", "4", "--parttype", "2", "--partfs", "1",
            "--partarch", "2", str(out), str(sqfs),
        )
        return out

    return make


@pytest.fixture
def make_file(tmp_path):
    """make_file(name, size, seed): a file of `size` bytes that differ per seed."""

    def make(name, size, seed=0):
        path = tmp_path / name
        block = (("%d-" % seed) * 4096).encode()[:65536]
        with open(path, "wb") as f:
            left = size
            while left > 0:
                chunk = block[: min(left, len(block))]
                f.write(chunk)
                left -= len(chunk)
        return path

    return make


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A running docker-registry with an access log, to count what was downloaded."""

    def __init__(self, base):
        self.dir = base
        self.addr = "127.0.0.1:%d" % _free_port()
        self.log = base / "registry.log"
        config = base / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n"
            "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n"
            "http:\n  addr: %s\n" % (base / "data", self.addr)
        )
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)], stdout=out, stderr=out
            )
        deadline = time.time() + 15
        host, port = self.addr.split(":")
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("docker-registry did not start on %s" % self.addr)
                time.sleep(0.05)

    def blob_gets(self, digest_hex):
        """How many times the blob sha256:digest_hex was downloaded (GET, not HEAD)."""
        text = self.log.read_text(errors="replace")
        return sum(
            1
            for line in text.splitlines()
            if '"GET ' in line and ("/blobs/sha256:" + digest_hex) in line
        )

    def requests(self, repository):
        """How many requests the registry has served for `repository` so far."""
        text = self.log.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if "/v2/%s/" % repository in line)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is not installed (apt-get install docker-registry)")
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


S3_BUCKET = "sifs"


class S3Server:
    """A running `s3s-fs` (a real S3 server over a directory) with one empty bucket."""

    ACCESS_KEY = "sregistry-test-access"
    SECRET_KEY = "sregistry-test-secret-0123456789"

    def __init__(self, base):
        root = base / "root"
        (root / S3_BUCKET).mkdir(parents=True)
        self.port = _free_port()
        self.log = base / "s3s-fs.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["s3s-fs", "--host", "127.0.0.1", "--port", str(self.port),
                 "--access-key", self.ACCESS_KEY, "--secret-key", self.SECRET_KEY, str(root)],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            )
        deadline = time.time() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("s3s-fs did not start: %s" % self.log.read_text())
                time.sleep(0.05)

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """s3s-fs on loopback, and the environment the library reads to reach it (its
    endpoint and credentials, no other AWS_* setting)."""
    if shutil.which("s3s-fs") is None:
        pytest.fail("s3s-fs is not installed (scripts/install-deps.sh test installs it)")
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    base = tmp_path / "s3"
    base.mkdir()
    server = S3Server(base)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3Server.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3Server.SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    yield server
    server.stop()
