"""One classification: every library error has a kind; the command line's exit code and
the Python class are each one match on it, as the tables in docs/commands.md and
docs/python.md say, and they never contradict each other. The situations where they once
did are run through both front ends here."""

import functools
import http.server
import os
import subprocess
import threading

import pytest

import sregistry
from sregistry import _native

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs")


def _table(page, heading, key_column, kinds_column):
    """{key: [kind, ...]} from the first table after `heading` in docs/`page`."""
    with open(os.path.join(DOCS, page)) as f:
        text = f.read()
    after = text.split(heading, 1)[1]
    rows = {}
    started = False
    for line in after.splitlines():
        if not line.startswith("|"):
            if started:
                break
            continue
        started = True
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = cells[key_column].strip("`")
        if key in ("class", "code") or set(key) <= set("- "):
            continue
        kinds = [k.strip().strip("`") for k in cells[kinds_column].split(",")]
        rows[key] = [k for k in kinds if k]
    return rows


def _exit_codes():
    """{kind: exit code} from docs/commands.md."""
    rows = _table("commands.md", "## Exit codes\n", 0, 1)
    return {k: int(code) for code, kinds in rows.items() for k in kinds}


def _classes():
    """{kind: class name} from docs/python.md."""
    rows = _table("python.md", "### Exceptions\n", 0, 2)
    out = {}
    for cls, kinds in rows.items():
        for k in kinds:
            assert k not in out, "%s is in two rows of docs/python.md" % k
            out[k] = cls.replace("sregistry.", "")
    return out


def test_every_kind_raises_the_class_docs_python_md_gives_it():
    """Danger: the class an error raises drifting from the table users read, or a kind
    the table does not place."""
    actual = _native._error_classes()
    documented = _classes()
    assert sorted(documented) == sorted(actual)
    for kind, cls in actual.items():
        assert cls is getattr(sregistry, documented[kind]), kind
        assert issubclass(cls, sregistry.Error)


def test_a_class_never_contradicts_the_exit_code():
    """Danger: Python saying "not found" or "bad input" where the command line says
    something else for the same error (as `add` of a directory, plain HTTP and a name
    taken by another remote once did)."""
    codes = _exit_codes()
    classes = _native._error_classes()
    assert sorted(codes) == sorted(classes)
    for kind, cls in classes.items():
        assert issubclass(cls, sregistry.NotFound) == (codes[kind] == 3), kind
        invalid = issubclass(cls, (sregistry.InvalidInput, sregistry.InvalidName))
        assert invalid == (codes[kind] == 2), kind


# ---------------------------------------------------------------------------------------
# The same situation through both front ends


def _bin():
    path = os.environ.get("SREGISTRY_BIN")
    if not path:
        pytest.fail("SREGISTRY_BIN is not set (scripts/test-python.sh sets it)")
    return path


def _cli(root, *args, env=None):
    return subprocess.run([_bin(), "--cache", str(root), *args], capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})))


@pytest.fixture
def files(tmp_path):
    """A loopback HTTP server over a directory: files(name, content) -> its URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def put(name, content):
        (served / name).write_bytes(content)
        return "http://127.0.0.1:%d/%s" % (server.server_address[1], name)

    yield put
    server.shutdown()
    server.server_close()


def test_a_file_that_is_not_an_image_is_bad_input_in_both(tmp_path):
    """Danger: `sregistry add DIR` exiting 1 (an error) while Python raises
    `InvalidInput` (a `ValueError`) for the same call: it is a bad argument, exit 2."""
    root = tmp_path / "c"
    cache = sregistry.Cache(root)
    directory = tmp_path / "a-directory"
    directory.mkdir()
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    fifo = tmp_path / "a.fifo"
    os.mkfifo(fifo)
    missing = tmp_path / "no-such-file.img"
    for path, cls in ((directory, sregistry.InvalidInput), (empty, sregistry.InvalidInput),
                      (fifo, sregistry.InvalidInput), (missing, sregistry.NoSuchFile)):
        out = _cli(root, "add", str(path), "--name", "lab/x:1")
        assert out.returncode == 2, (path, out.stderr)
        with pytest.raises(cls):
            cache.add(str(path), "lab/x:1")
    real = tmp_path / "real.img"
    real.write_bytes(b"real")
    link = tmp_path / "link.img"
    link.symlink_to(real)
    out = _cli(root, "add", str(link), "--name", "lab/x:1", "--move")
    assert out.returncode == 2, out.stderr
    with pytest.raises(sregistry.InvalidInput):
        cache.add(str(link), "lab/x:1", move=True)
    assert cache.list() == []


def test_plain_http_is_bad_input_in_both(tmp_path):
    """Danger: plain HTTP to a host that is not loopback exiting 1 in the command line
    while Python raises `InvalidInput`: both say the reference, as given, is refused."""
    root = tmp_path / "c"
    out = _cli(root, "pull", "http://example.org/x.sif")
    assert out.returncode == 2, out.stderr
    assert "plain HTTP" in out.stderr
    with pytest.raises(sregistry.InvalidInput):
        sregistry.Cache(root).pull("http://example.org/x.sif")


def test_a_name_holding_another_remotes_image_is_a_conflict_in_both(tmp_path, files):
    """Danger: Python raising `InvalidInput` (a `ValueError`, "bad argument") where the
    command line exits 1 for a name that holds another remote's image: it is a conflict
    with the cache's state, as a pinned name is, and `force=True` or `name=` resolves it."""
    root = tmp_path / "c"
    cache = sregistry.Cache(root)
    one = files("one.sif", b"image one")
    two = files("two.sif", b"image two")
    cache.pull(one, name=_native.default_name(two))
    out = _cli(root, "pull", two)
    assert out.returncode == 1, out.stderr
    assert "not from" in out.stderr
    with pytest.raises(sregistry.Conflict) as e:
        cache.pull(two)
    assert not isinstance(e.value, ValueError)
    assert issubclass(sregistry.Pinned, sregistry.Conflict)


def test_no_space_for_a_download_is_not_a_remote_error_in_either(tmp_path, files, monkeypatch):
    """Danger: `except sregistry.RemoteError: retry later` catching a full disk, which no
    retry mends: Python raised `RemoteError` for it, while the command line (exit 1) and
    the index's own full disk say "error"."""
    root = tmp_path / "c"
    url = files("big.sif", b"x" * 4096)
    out = _cli(root, "pull", url, env={"SREGISTRY_MIN_FREE": "1000000T"})
    assert out.returncode == 1, out.stderr
    assert "not enough space" in out.stderr
    monkeypatch.setenv("SREGISTRY_MIN_FREE", "1000000T")
    with pytest.raises(sregistry.Error) as e:
        sregistry.Cache(root).pull(url)
    assert "not enough space" in str(e.value)
    assert not isinstance(e.value, sregistry.RemoteError)


def test_a_remotes_cached_image_of_the_wrong_size_is_a_problem_in_both(tmp_path, files):
    """Danger: `get URL` of a damaged cached image exiting 1 where `get NAME` of the same
    image exits 4 (a check found a problem) and Python raises `Corrupt` for both."""
    root = tmp_path / "c"
    cache = sregistry.Cache(root)
    url = files("tool.sif", b"tool image")
    path = cache.get(url)
    os.chmod(path, 0o644)
    with open(path, "ab") as f:
        f.write(b" and more")
    name = _native.default_name(url)
    for ref in (name, url):
        out = _cli(root, "get", ref)
        assert out.returncode == 4, (ref, out.stderr)
        with pytest.raises(sregistry.Corrupt):
            cache.get(ref)
