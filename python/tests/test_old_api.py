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
    assert moved.image == str(out / ("1@%s.sif" % renamed.version))
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


def test_old_add_of_a_symlink_names_the_python_argument(client, make_file, tmp_path):
    """Danger: the old API's add (which moves) refusing a symbolic link with advice about a
    command-line flag (`--move`) its caller never gave."""
    target = make_file("t.sif", 900, seed=61)
    link = tmp_path / "link.sif"
    link.symlink_to(target)
    with pytest.raises(sregistry.InvalidInput) as e:
        client.add(image_path=str(link), image_uri="lab/link:1")
    assert "copy=True" in str(e.value) and "--" not in str(e.value)
    assert link.is_symlink() and target.exists()
    rec = client.add(image_path=str(link), image_uri="lab/link:1", copy=True)
    assert os.path.getsize(rec.image) == 900 and target.exists()


def test_old_add_of_a_file_inside_the_cache_names_the_python_argument(client, make_file):
    """Danger: the old API's add (which moves) refusing a file of the cache itself with
    advice about `move=True`, an argument of another API its caller never gave."""
    rec = client.add(image_path=str(make_file("in.sif", 800, seed=66)), image_uri="lab/in:1")
    with pytest.raises(sregistry.InvalidInput) as e:
        client.add(image_path=rec.image, image_uri="lab/in:2")
    assert "copy=True" in str(e.value) and "move=" not in str(e.value)
    assert "--" not in str(e.value)
    again = client.add(image_path=rec.image, image_uri="lab/in:2", copy=True)
    assert again.image == rec.image and os.path.exists(rec.image)
    assert client.cache.verify().clean


def test_old_add_of_a_missing_file_is_file_not_found(client, tmp_path):
    """Danger: the old API and the modern one raising different classes for one mistake."""
    with pytest.raises(FileNotFoundError) as e:
        client.add(image_path=str(tmp_path / "absent.sif"), image_uri="lab/absent:1")
    assert isinstance(e.value, sregistry.InvalidInput)
    assert "absent.sif" in str(e.value)


def test_old_paths_may_be_bytes_or_pathlike(client, make_file, tmp_path):
    """Danger: the old API taking str paths only where the modern one takes bytes too."""
    src = make_file("b.sif", 1200, seed=62)
    rec = client.add(image_path=os.fsencode(src), image_uri="lab/b:1", copy=True)
    out = tmp_path / "out"
    out.mkdir()
    moved = client.mv("lab/b:1", os.fsencode(out))
    assert os.path.getsize(moved.image) == 1200
    copied = client.cp(out / "c.sif", image_name="lab/b:1")
    assert copied.image == str(out / "c.sif")
    assert os.path.exists(rec.image)


MV_SCRIPT = '''
import os, sys
from sregistry.main import get_client

work = sys.argv[1]
src = os.path.join(work, "a.sif")
with open(src, "wb") as f:
    f.write(b"mv " * 3000)
out = os.path.join(work, "out")
os.mkdir(out)
client = get_client(quiet=True)
client.add(image_path=src, image_uri="lab/a:1.0@v7")
moved = client.mv("lab/a:1.0@v7", out)
print(sorted(os.listdir(out)), moved.image)
'''


@pytest.mark.parametrize("which", ["ours", "old"])
def test_old_mv_into_a_directory_names_the_file_as_the_old_client(tmp_path, which):
    """Danger: `mv(name, dir)` writing a file named by the cache's digest, without `.sif`
    (Singularity and scripts expect `TAG@VERSION.sif`, the name the real 0.2.39 gives it:
    checked here against it)."""
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "mv.py"
    script.write_text(MV_SCRIPT)
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
    listed, image = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert listed == "['1.0@v7.sif']"
    assert image == str(work / "out" / "1.0@v7.sif")
    assert (work / "out" / "1.0@v7.sif").read_bytes() == b"mv " * 3000


def test_old_cp_copies_out_and_the_cache_keeps_the_name(client, make_file, tmp_path):
    """Danger (docs/python.md: `cp` copies the image out and leaves the name): cp handing
    out or moving the cache's own file, which every name with that content shares."""
    src = make_file("cp.sif", 4000, seed=63)
    data = src.read_bytes()
    rec = client.add(image_path=str(src), image_uri="lab/cp:1")
    dest = tmp_path / "copy.sif"
    copied = client.cp(str(dest), image_name="lab/cp:1")
    assert copied.image == str(dest) and copied.uri == rec.uri
    assert dest.read_bytes() == data
    assert os.stat(dest).st_ino != os.stat(rec.image).st_ino
    # The cache's file and the name are as they were.
    assert client.get("lab/cp:1", quiet=True).image == rec.image
    with open(rec.image, "rb") as f:
        assert f.read() == data
    assert client.cache.verify().clean
    # Writing the copy leaves the cache's file alone.
    with open(dest, "ab") as f:
        f.write(b"changed")
    assert client.cache.verify().clean
    # By record, as mv and rename call it.
    again = client.cp(str(tmp_path / "again.sif"), container=client.get("lab/cp:1", quiet=True))
    assert (tmp_path / "again.sif").read_bytes() == data and again.image.endswith("again.sif")
    with pytest.raises(sregistry.NotFound):
        client.cp(str(tmp_path / "x.sif"), image_name="lab/none:1")
    with pytest.raises(sregistry.InvalidInput):
        client.cp(str(tmp_path / "no-dir" / "x.sif"), image_name="lab/cp:1")


def test_get_client_is_one_client_whatever_image_or_SREGISTRY_CLIENT_say(
    tmp_path, monkeypatch, registry, make_file
):
    """Danger (docs/python.md: `get_client` always gives the same client, whatever `image`
    or `SREGISTRY_CLIENT` say): the real 0.2.39 picked a backend by `image`'s scheme,
    else by `SREGISTRY_CLIENT` (`docker`, `s3`, `hub`, ...), else Singularity Hub; a
    script passing either must still get the client over the cache, which reaches every
    supported remote by the reference's scheme."""
    monkeypatch.setenv("SREGISTRY_CACHE", str(tmp_path / "dflt"))
    src = make_file("gc.sif", 3000, seed=64)
    sregistry.Cache(tmp_path / "pusher").add(src, "gc/one:1")
    remote = "oras://%s/gc/one:1" % registry.addr
    sregistry.Cache(tmp_path / "pusher").push("gc/one:1", remote)
    clients = []
    for setting in (None, "docker", "s3", "hub", "no-such-backend"):
        if setting is None:
            monkeypatch.delenv("SREGISTRY_CLIENT", raising=False)
        else:
            monkeypatch.setenv("SREGISTRY_CLIENT", setting)
        for image in (None, "docker://busybox:latest", "s3://bucket/key.sif", remote,
                      "shub://vsoch/hello-world"):
            c = get_client(image=image, quiet=True)
            assert type(c) is Client and c.client_name == "sregistry"
            assert c.cache.root == str(tmp_path / "dflt")
            clients.append(c)
    # One cache behind every one of them: what one pulls (here the one asked for with an
    # s3:// image under SREGISTRY_CLIENT=docker), the others find.
    path = clients[7].pull(remote)
    assert path == clients[-1].get("%s/gc/one:1" % registry.addr, quiet=True).image
    assert src.read_bytes() == open(path, "rb").read()
    assert [r.uri.split("@")[0] for r in clients[0].images()] == [
        "%s/gc/one:1" % registry.addr]


def test_old_push_to_s3_is_stored_under_the_name_pull_gives(client, s3, make_file):
    """Danger: the old API's S3 push naming its copy in the cache otherwise than `pull`
    of the same key does, so a pull after a push fetches the object again and the cache
    keeps two names for one image."""
    src = make_file("s3.sif", 5000, seed=65)
    remote = "s3://%s/lab/tool.sif" % "sifs"
    client.push(str(src), remote, tag="ignored")
    pushed = [i.name for i in client.cache.list()]
    assert len(pushed) == 1
    path = client.pull(remote)
    assert [i.name for i in client.cache.list()] == pushed
    assert open(path, "rb").read() == src.read_bytes()
    # The name the command line's pull gives: the endpoint's host, then s3/BUCKET/KEY.
    fresh = sregistry.Cache(client.cache.root + "-fresh").pull(remote)
    assert fresh.name == pushed[0]


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
