"""The old client's API (sregistry.main) over the cache."""

import os
import subprocess
import sys

import pytest

import sregistry
from sregistry.main import Client, get_client

SCRIPT = os.path.join(os.path.dirname(__file__), "old_client_script.py")


def test_an_old_client_script_runs_unchanged(tmp_path):
    """Danger: an existing script breaking on a changed name, argument or return shape."""
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, SREGISTRY_CACHE=str(tmp_path / "cache"))
    out = subprocess.run(
        [sys.executable, SCRIPT, str(work)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "old client script: ok" in out.stdout
    # It ran against the cache: what it left is there for the modern API.
    names = [i.name for i in sregistry.Cache(tmp_path / "cache").list()]
    assert names == ["vsoch/hello-world:latest"]


def test_the_script_is_a_real_old_client_script(tmp_path):
    """The same script against sregistry 0.2.39 from PyPI (scripts/install-deps.sh installs it
    into a venv of its own and names its python in SREGISTRY_OLD_CLIENT)."""
    old = os.environ.get("SREGISTRY_OLD_CLIENT")
    if not old:
        if os.environ.get("CI"):
            pytest.fail("SREGISTRY_OLD_CLIENT is not set (make test-python sets it)")
        pytest.skip("SREGISTRY_OLD_CLIENT is not set (make test-python sets it)")
    if not os.path.exists(old):
        pytest.fail("no old client at `%s`: run scripts/install-deps.sh test" % old)
    work = tmp_path / "work"
    work.mkdir()
    db = tmp_path / "db"
    db.mkdir()
    env = dict(
        os.environ,
        SREGISTRY_DATABASE=str(db),
        SREGISTRY_STORAGE=str(db / "shub"),
        SREGISTRY_CREDENTIALS_CACHE=str(db),
    )
    out = subprocess.run([old, SCRIPT, str(work)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "old client script: ok" in out.stdout
    assert (db / "sregistry.db").exists()


@pytest.fixture
def client(tmp_path):
    return Client(quiet=True, cache=str(tmp_path / "cache"))


def test_add_moves_unless_copy_and_keeps_a_given_version(client, make_file):
    """Danger: the old add's move (or its copy=True) changing meaning."""
    src = make_file("a.sif", 1000)
    rec = client.add(image_path=str(src), image_uri="lab/a:2.0@v7", url="https://x/a.sif",
                     metadata={"k": "v"})
    assert not src.exists()
    assert (rec.collection, rec.name, rec.tag, rec.version) == ("lab", "a", "2.0", "v7")
    assert rec.uri == "lab/a:2.0@v7"
    assert rec.url == "https://x/a.sif"
    assert client.inspect("lab/a:2.0")["metrics"] == {"k": "v"}
    assert client.get("lab/a:2.0@v7", quiet=True).image == rec.image
    assert client.get("lab/a:2.0@v8", quiet=True) is None

    kept = make_file("b.sif", 1000, seed=1)
    client.add(image_path=str(kept), image_uri="lab/b", copy=True)
    assert kept.exists()
    assert client.get("lab/b:latest", quiet=True).tag == "latest"
    # The default collection is the old client's `library`.
    client.add(image_path=str(kept), image_uri="bare", copy=True)
    assert client.get("library/bare:latest", quiet=True) is not None


def test_get_prints_the_path_unless_quiet(client, make_file, capsys):
    rec = client.add(image_path=str(make_file("p.sif", 100)), image_uri="lab/p:1")
    capsys.readouterr()
    client.get("lab/p:1")
    assert capsys.readouterr().out.strip() == rec.image
    client.get("lab/p:1", quiet=True)
    assert capsys.readouterr().out == ""


def test_rename_mv_and_rmi(client, make_file, tmp_path):
    """Danger: rename losing the content, mv handing out the cache's own file."""
    rec = client.add(image_path=str(make_file("r.sif", 3000)), image_uri="lab/r:1")
    renamed = client.rename("lab/r:1", "lab/renamed:1")
    assert renamed.name == "renamed" and renamed.image == rec.image
    assert client.get("lab/r:1", quiet=True) is None
    assert client.rename("lab/r:1", "lab/x:1") is None

    out = tmp_path / "out"
    out.mkdir()
    moved = client.mv("lab/renamed:1", str(out))
    assert moved.image == str(out / os.path.basename(rec.image))
    assert os.path.getsize(moved.image) == 3000
    # The cache keeps its file and the name.
    assert os.path.exists(rec.image)
    assert client.get("lab/renamed:1", quiet=True) is not None

    assert client.rmi("lab/renamed:1") == rec.image
    assert not os.path.exists(rec.image)


def test_errors_keep_the_modern_classes(client):
    with pytest.raises(sregistry.NotFound):
        client.inspect("lab/none:1")
    with pytest.raises(sregistry.InvalidInput):
        client.add(image_path=None, image_uri="lab/none:1")
    with pytest.raises(sregistry.InvalidInput):
        client.add(image_path="/nonexistent/file.sif", image_uri="lab/none:1")


def test_get_client_gives_a_client_over_the_default_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SREGISTRY_CACHE", str(tmp_path / "dflt"))
    c = get_client(quiet=True)
    assert isinstance(c, Client)
    assert c.cache.root == str(tmp_path / "dflt")


def test_old_pull_and_push_through_a_registry(client, registry, make_file, tmp_path):
    """Danger: the old pull/push return shapes (a path, or a list of paths) changing."""
    src = make_file("push.sif", 20000, seed=7)
    data = src.read_bytes()
    client.push(str(src), "oras://%s/old/pushed" % registry.addr, tag="v1")
    assert src.exists()
    remote = "oras://%s/old/pushed:v1" % registry.addr
    path = client.pull(remote)
    assert isinstance(path, str)
    with open(path, "rb") as f:
        assert f.read() == data
    assert client.pull([remote]) == [path]
    os.chdir(tmp_path)
    out = client.pull(remote, file_name="copy.sif", save=False)
    assert out == str(tmp_path / "copy.sif")
    assert (tmp_path / "copy.sif").read_bytes() == data


def test_a_migrated_image_reads_back_with_its_old_record(tmp_path):
    """Danger: the old API and `sregistry migrate` disagreeing on the labels that keep an
    old row's facts, so a migrated image loses its version, url or id here."""
    old, binary = os.environ.get("SREGISTRY_OLD_CLIENT"), os.environ.get("SREGISTRY_BIN")
    if not (old and binary):
        if os.environ.get("CI"):
            pytest.fail("SREGISTRY_OLD_CLIENT and SREGISTRY_BIN are needed (make test-python sets them)")
        pytest.skip("SREGISTRY_OLD_CLIENT and SREGISTRY_BIN are not set")
    db = tmp_path / "db"
    db.mkdir()
    src = tmp_path / "old.sif"
    src.write_bytes(b"old image " * 5000)
    env = dict(os.environ, SREGISTRY_DATABASE=str(db), SREGISTRY_STORAGE=str(db / "shub"),
               SREGISTRY_CREDENTIALS_CACHE=str(db))
    made = subprocess.run(
        [old, "-c", "import sys; from sregistry.main import get_client; "
         "c = get_client(quiet=True); r = c.add(image_path=sys.argv[1], "
         "image_uri='lab/old:1.0', url='https://example.org/old.sif'); "
         "print(r.version, r.id)", str(src)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    version, row = made[-2], made[-1]
    cache = tmp_path / "cache"
    subprocess.run([binary, "--cache", str(cache), "migrate", "--from", str(db)],
                   check=True, capture_output=True)
    rec = Client(quiet=True, cache=str(cache)).get("lab/old:1.0", quiet=True)
    assert rec.version == version
    assert rec.url == "https://example.org/old.sif"
    assert rec.id == int(row)
    assert rec.uri == "lab/old:1.0@" + version


def test_a_second_add_under_one_uri_keeps_the_first_version(client, make_file):
    """Danger: the second add under a uri re-pointing the name and dropping the first
    image: `get(uri@version)` answering None and the next gc deleting the only copy of a
    file the add had moved in (the old client kept one row and one file per version)."""
    a = make_file("a.sif", 5000, seed=31)
    a_bytes = a.read_bytes()
    b = make_file("b.sif", 5000, seed=32)
    ra = client.add(image_path=str(a), image_uri="lab/tool:1")
    rb = client.add(image_path=str(b), image_uri="lab/tool:1")
    assert not a.exists() and ra.version != rb.version
    assert client.get("lab/tool:1", quiet=True).version == rb.version
    first = client.get("lab/tool:1@" + ra.version, quiet=True)
    assert first is not None, "the first version is gone"
    assert (first.collection, first.name, first.tag, first.version) == (
        "lab", "tool", "1", ra.version)
    assert first.uri == "lab/tool:1@" + ra.version
    with open(first.image, "rb") as f:
        assert f.read() == a_bytes
    # Both versions are records, as two rows were.
    assert sorted(r.uri for r in client.images()) == sorted(
        ["lab/tool:1@" + ra.version, "lab/tool:1@" + rb.version])
    # gc (nothing idle spared) keeps what a name reaches.
    client.cache.gc(min_idle=0)
    kept = client.get("lab/tool:1@" + ra.version, quiet=True)
    with open(kept.image, "rb") as f:
        assert f.read() == a_bytes
    # The same version added again is one record, not two.
    again = make_file("a2.sif", 5000, seed=31)
    client.add(image_path=str(again), image_uri="lab/tool:1")
    assert sorted(r.uri for r in client.images()) == sorted(
        ["lab/tool:1@" + ra.version, "lab/tool:1@" + rb.version])
    assert client.get("lab/tool:1", quiet=True).version == ra.version
    assert client.get("lab/tool:1@" + rb.version, quiet=True).version == rb.version
    # rm of one version leaves the other.
    assert client.rm("lab/tool:1@" + rb.version) is not None
    assert client.get("lab/tool:1@" + rb.version, quiet=True) is None
    assert client.get("lab/tool:1", quiet=True).version == ra.version


def test_a_given_version_is_kept_apart_from_the_next(client, make_file):
    """Danger: versions given in the uri (`name:tag@v1`, then `@v2`) replacing each other."""
    client.add(image_path=str(make_file("v1.sif", 3000, seed=41)), image_uri="lab/v:1@v1")
    client.add(image_path=str(make_file("v2.sif", 3000, seed=42)), image_uri="lab/v:1@v2")
    assert client.get("lab/v:1@v1", quiet=True).version == "v1"
    assert client.get("lab/v:1@v2", quiet=True).version == "v2"
    assert client.get("lab/v:1", quiet=True).version == "v2"
    assert client.inspect("lab/v:1@v1")["version"] == "v1"


def test_rename_onto_an_existing_uri_keeps_what_it_held(client, make_file):
    """Danger: rename re-pointing the target's name and dropping its image, which the next
    gc then deletes."""
    t = make_file("t.sif", 4000, seed=51)
    t_bytes = t.read_bytes()
    rt = client.add(image_path=str(t), image_uri="lab/tool:1")
    ra = client.add(image_path=str(make_file("ra.sif", 4000, seed=52)), image_uri="lab/a:1")
    renamed = client.rename("lab/a:1", "lab/tool:1")
    assert renamed.version == ra.version and renamed.uri == "lab/tool:1@" + ra.version
    assert client.get("lab/a:1", quiet=True) is None
    client.cache.gc(min_idle=0)
    old = client.get("lab/tool:1@" + rt.version, quiet=True)
    assert old is not None, "the target's image is gone"
    with open(old.image, "rb") as f:
        assert f.read() == t_bytes
    assert client.get("lab/tool:1", quiet=True).version == ra.version


VERSIONS_SCRIPT = '''
import os, sys
from sregistry.main import get_client

work = sys.argv[1]


def image_file(name, text):
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write((text * 20000).encode())
    return path


client = get_client(quiet=True)
ra = client.add(image_path=image_file("a.sif", "first "), image_uri="lab/tool:1")
rb = client.add(image_path=image_file("b.sif", "second "), image_uri="lab/tool:1")
assert ra.version != rb.version
for rec, text in ((ra, "first "), (rb, "second ")):
    found = client.get("lab/tool:1@" + rec.version, quiet=True)
    assert found is not None, rec.version
    assert (found.name, found.tag, found.version) == ("tool", "1", rec.version)
    with open(found.image, "rb") as f:
        assert f.read() == (text * 20000).encode()
assert sorted(c.version for c in client.images()) == sorted([ra.version, rb.version])
print("versions: ok")
'''


@pytest.mark.parametrize("which", ["ours", "old"])
def test_versions_under_one_uri_as_the_old_client_keeps_them(tmp_path, which):
    """The behaviour `add` keeps, checked against the real old client (0.2.39) too: two
    adds under one uri leave two records, each found by `uri@version` with its content."""
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "versions.py"
    script.write_text(VERSIONS_SCRIPT)
    env = dict(os.environ, SREGISTRY_CACHE=str(tmp_path / "cache"))
    python = sys.executable
    if which == "old":
        python = os.environ.get("SREGISTRY_OLD_CLIENT")
        if not python:
            if os.environ.get("CI"):
                pytest.fail("SREGISTRY_OLD_CLIENT is not set (make test-python sets it)")
            pytest.skip("SREGISTRY_OLD_CLIENT is not set (make test-python sets it)")
        db = tmp_path / "db"
        db.mkdir()
        env.update(SREGISTRY_DATABASE=str(db), SREGISTRY_STORAGE=str(db / "shub"),
                   SREGISTRY_CREDENTIALS_CACHE=str(db))
    out = subprocess.run([python, str(script), str(work)], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "versions: ok" in out.stdout


def test_an_old_api_pull_of_a_signed_url_never_shows_its_query(tmp_path, make_file, capsys):
    """Danger: `pull(url, save=False)` naming the copy after the whole URL, query and all,
    so a pre-signed URL's signature lands in a file name in the working directory and in
    the "Success!" line."""
    import http.server
    import threading

    data = make_file("served.sif", 5000, seed=3).read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _head(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", '"v1"')
            self.end_headers()

        def do_HEAD(self):
            self._head()

        def do_GET(self):
            self._head()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = "http://127.0.0.1:%d/files/tool.sif?X-Amz-Signature=SIGSECRET&token=TOKSECRET" % (
            server.server_address[1]
        )
        work = tmp_path / "work"
        work.mkdir()
        os.chdir(work)
        client = Client(quiet=False, cache=str(tmp_path / "cache"))
        out = client.pull(url, save=False)
        with open(out, "rb") as f:
            assert f.read() == data
        printed = capsys.readouterr()
        for secret in ("SIGSECRET", "TOKSECRET", "sigsecret", "toksecret"):
            assert secret not in out
            assert secret not in printed.out + printed.err
            assert not any(secret in n for n in os.listdir(work))
            for root, _, files in os.walk(tmp_path / "cache"):
                for n in files:
                    with open(os.path.join(root, n), "rb") as f:
                        assert secret.encode() not in f.read(), os.path.join(root, n)
    finally:
        server.shutdown()
