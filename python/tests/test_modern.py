"""The modern API (sregistry.Cache) against real files in a temp cache."""

import hashlib
import os
import subprocess
import sys
import textwrap
import time

import pytest

import sregistry


def test_add_get_list_inspect_round_trip_a_real_sif(cache, make_sif):
    """Danger: the binding hands back another path or loses what the library knows."""
    src = make_sif("tool.sif", "hello")
    data = src.read_bytes()
    img = cache.add(src, "lab/tool:1.0", labels={"team": "bio"})
    assert isinstance(img, sregistry.Image)
    assert img.name == "lab/tool:1.0"
    assert img.size == len(data)
    assert img.labels == {"team": "bio"}
    assert img.digest.startswith("blake3:")
    assert src.exists(), "add without move=True must leave the file"

    path = cache.get("lab/tool:1.0")
    assert path == img.path
    with open(path, "rb") as f:
        assert f.read() == data

    assert [i.name for i in cache.list()] == ["lab/tool:1.0"]
    assert cache.list("nothing-like-it") == []
    assert [i.name for i in cache.list("lab/*")] == ["lab/tool:1.0"]

    info = cache.inspect("lab/tool:1.0")
    assert info.digest == img.digest and info.path == img.path
    assert info.sif["header"]["arch"] == "amd64"
    kinds = [d["kind"] for d in info.sif["descriptors"]]
    assert "FS" in kinds and "Def.FILE" in kinds, kinds
    assert cache.inspect("lab/tool:1.0", sif=False).sif is None


def test_inspect_of_a_file_that_is_not_sif_has_no_header(cache, make_file):
    img = cache.add(make_file("plain.bin", 1000), "lab/plain:1")
    assert cache.inspect(img.name).sif is None


def test_move_hands_the_file_over_and_copy_keeps_it(cache, make_file):
    """Danger: move=True leaving the user's file behind, or move=False taking it."""
    kept = make_file("kept.bin", 5000, seed=1)
    moved = make_file("moved.bin", 5000, seed=2)
    cache.add(kept, "lab/kept:1")
    cache.add(moved, "lab/moved:1", move=True)
    assert kept.exists()
    assert not moved.exists()
    assert os.path.getsize(cache.get("lab/moved:1")) == 5000


def test_tag_pin_unpin_remove(cache, make_file):
    """Danger: a pinned name removed, or remove leaving the name reachable."""
    img = cache.add(make_file("a.bin", 3000), "lab/a:1")
    tagged = cache.tag("lab/a:1", "lab/a:stable")
    assert tagged.name == "lab/a:stable" and tagged.digest == img.digest

    assert cache.pin("lab/a:stable") is True
    assert cache.pin("lab/a:stable") is False
    assert cache.inspect("lab/a:stable").pinned
    with pytest.raises(sregistry.Pinned):
        cache.remove("lab/a:stable")
    assert cache.get("lab/a:stable") == img.path

    assert cache.unpin("lab/a:stable") is True
    report = cache.remove(["lab/a:1", "lab/a:stable"])
    assert sorted(report.names) == ["lab/a:1", "lab/a:stable"]
    assert report.bytes_freed == 3000
    with pytest.raises(sregistry.NotFound):
        cache.get("lab/a:1")
    assert not os.path.exists(img.path)


def test_exceptions_and_their_bases(cache, tmp_path, make_file):
    """Danger: `except KeyError` / `except ValueError` in callers' code missing our errors."""
    assert issubclass(sregistry.NotFound, KeyError)
    assert issubclass(sregistry.InvalidName, ValueError)
    for cls in (sregistry.NotFound, sregistry.InvalidName, sregistry.LockTimeout,
                sregistry.Corrupt, sregistry.Pinned, sregistry.InvalidInput,
                sregistry.RemoteError):
        assert issubclass(cls, sregistry.Error)

    with pytest.raises(KeyError) as e:
        cache.get("lab/absent:1")
    assert isinstance(e.value, sregistry.NotFound)
    # The message names the image and says what to do, unquoted by KeyError's repr.
    assert str(e.value).startswith("no image `lab/absent:1`")

    with pytest.raises(ValueError) as e:
        cache.get("Not A Name!")
    assert isinstance(e.value, sregistry.InvalidName)

    with pytest.raises(sregistry.InvalidName):
        cache.pull("ftp://example.org/x")

    with pytest.raises(sregistry.InvalidInput):
        cache.add(tmp_path, "lab/dir:1")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(sregistry.InvalidInput):
        cache.add(tmp_path / "empty", "lab/empty:1")

    img = cache.add(make_file("x.bin", 100), "lab/x:1")
    with pytest.raises(sregistry.InvalidName):
        cache.tag("lab/x:1", "lab/y:1@" + img.digest)
    with pytest.raises(sregistry.InvalidInput):
        cache.gc(max_size="lots")


def test_lock_timeout_when_another_process_holds_the_index(cache, make_file, tmp_path):
    """Danger: a call waiting forever, or failing with an error callers cannot tell apart."""
    cache.add(make_file("x.bin", 100), "lab/x:1")
    lock = os.path.join(cache.root, "v1", "index.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import fcntl, sys, time
            f = open(sys.argv[1], "r+")
            fcntl.lockf(f, fcntl.LOCK_EX)
            print("held", flush=True)
            time.sleep(30)
        """), lock],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        impatient = sregistry.Cache(cache.root, lock_timeout=0.3)
        with pytest.raises(sregistry.LockTimeout) as e:
            impatient.add(make_file("y.bin", 100), "lab/y:1")
        assert isinstance(e.value, TimeoutError)
        assert "index.lock" in str(e.value)
    finally:
        holder.kill()
        holder.wait()
    assert cache.add(make_file("y.bin", 100), "lab/y:1").name == "lab/y:1"


def test_verify_finds_changed_content_and_get_refuses_it(cache, make_file):
    """Danger: a corrupted image handed out, or verify's report losing the finding."""
    img = cache.add(make_file("c.bin", 8192, seed=3), "lab/c:1")
    assert cache.verify().clean
    os.chmod(img.path, 0o644)
    with open(img.path, "r+b") as f:
        f.write(b"tampered")
    report = cache.verify(["lab/c:1"])
    assert not report.clean
    assert report.problems[0]["kind"] == "corrupt"
    assert "lab/c:1" in report.problems[0]["names"]
    with pytest.raises(sregistry.Corrupt):
        cache.get("lab/c:1")


def test_gc_removes_content_no_name_uses(cache, make_file):
    """Danger: gc's report disagreeing with what it removed."""
    cache.add(make_file("keep.bin", 4000, seed=4), "lab/keep:1")
    gone = cache.add(make_file("gone.bin", 6000, seed=5), "lab/gone:1")
    cache.remove("lab/gone:1", keep_blobs=True)
    assert os.path.exists(gone.path)
    dry = cache.gc(dry_run=True)
    assert dry.dry_run and [b["digest"] for b in dry.blobs] == [gone.digest]
    assert os.path.exists(gone.path)
    report = cache.gc()
    assert [b["digest"] for b in report.blobs] == [gone.digest]
    assert report.bytes_freed >= 6000
    assert report.bytes_kept == 4000
    assert not os.path.exists(gone.path)
    assert cache.get("lab/keep:1")


def test_gc_tells_progress_and_an_exception_leaves_the_rest_to_the_next_gc(cache, make_file):
    """Danger: a long eviction that cannot be followed or stopped, or one stopped half-way
    that leaves names pointing at removed files or files no later gc removes."""
    keep = cache.add(make_file("k.bin", 4000, seed=80), "lab/k:1")
    gone = [cache.add(make_file("g%d.bin" % i, 5000 + i, seed=81 + i), "lab/g:%d" % i)
            for i in range(3)]
    for g in gone:
        cache.remove(g.name, keep_blobs=True)
    seen = []

    def stop(done, total):
        seen.append((done, total))
        raise RuntimeError("enough")

    with pytest.raises(RuntimeError):
        cache.gc(progress=stop)
    assert seen == [(1, 3)]
    assert sum(os.path.exists(g.path) for g in gone) == 0, "the files stayed in blobs/"
    assert cache.get("lab/k:1") == keep.path
    seen.clear()
    again = cache.gc(progress=lambda d, t: seen.append((d, t)))
    assert seen == [] and again.blobs == []  # the records went with the first gc
    assert again.tmp_files == 2, "the files the stopped gc left were not removed"
    assert cache.verify().clean


def test_default_root_is_the_command_lines(tmp_path):
    """Danger: Python and the CLI looking at different caches."""
    env = dict(os.environ, SREGISTRY_CACHE=str(tmp_path / "envcache"))
    out = subprocess.run(
        [sys.executable, "-c", "import sregistry; print(sregistry.Cache().root)"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert out == str(tmp_path / "envcache")


def test_add_many_adds_each_item_and_refuses_bad_ones_in_place(cache, make_file, tmp_path):
    """Danger: one bad item failing the whole batch, results out of order, or move=True
    taking files whose names were refused."""
    items = [(str(make_file("m%d.bin" % i, 1000 + i, seed=i)), "lab/m:%d" % i) for i in range(5)]
    items.insert(2, (str(tmp_path / "absent.bin"), "lab/absent:1"))
    bad_name_file = make_file("bad.bin", 10, seed=50)
    items.insert(4, (str(bad_name_file), "Bad Name"))
    items.append((str(make_file("l.bin", 500, seed=99)), "lab/l:1", {"k": "v"}))
    results = cache.add_many(items, move=True, batch=2)
    assert len(results) == len(items)
    assert isinstance(results[2], sregistry.Error) and "absent.bin" in str(results[2])
    assert isinstance(results[4], sregistry.InvalidName)
    added = [r.name for r in results if isinstance(r, sregistry.Image)]
    assert added == ["lab/m:0", "lab/m:1", "lab/m:2", "lab/m:3", "lab/m:4", "lab/l:1"]
    assert results[-1].labels == {"k": "v"}
    assert sorted(i.name for i in cache.list()) == sorted(added)
    for r in results:
        if isinstance(r, sregistry.Image):
            assert cache.get(r.name) == r.path
    # Moved in: gone from where they were, except the one whose name was refused.
    assert not any(os.path.exists(p) for p, *_ in items if "absent" not in p and p != str(bad_name_file))
    assert bad_name_file.exists()


def test_add_many_tells_progress_per_batch_and_an_exception_stops_the_rest(cache, make_file):
    """Danger: an import of thousands of files that cannot be followed, or one that cannot
    be stopped, or one stopped that loses or half-adds what it had done."""
    items = [(str(make_file("p%d.bin" % i, 2000 + i, seed=60 + i)), "lab/p:%d" % i)
             for i in range(5)]
    seen = []
    results = cache.add_many(items, batch=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert all(isinstance(r, sregistry.Image) for r in results)

    more = [(str(make_file("q%d.bin" % i, 3000 + i, seed=70 + i)), "lab/q:%d" % i)
            for i in range(5)]

    def stop(done, total):
        raise KeyboardInterrupt("enough")

    with pytest.raises(KeyboardInterrupt):
        cache.add_many(more, batch=2, progress=stop)
    assert sorted(i.name for i in cache.list() if i.name.startswith("lab/q:")) == [
        "lab/q:0", "lab/q:1"]
    assert all(os.path.exists(p) for p, _ in more), "a copy took the user's files"


def test_verify_tells_progress_and_an_exception_stops_it_before_quarantine(cache, make_file):
    """Danger: a verify that cannot be followed or stopped, or one stopped half-way that
    still moved content to quarantine."""
    imgs = [cache.add(make_file("v%d.bin" % i, 100000 + i, seed=30 + i), "lab/v:%d" % i)
            for i in range(4)]
    total = sum(i.size for i in imgs)
    seen = []
    assert cache.verify(progress=lambda d, t: seen.append((d, t))).clean
    assert len(seen) == 4 and all(t == total for _, t in seen)
    assert max(seen) == (total, total)

    os.chmod(imgs[0].path, 0o644)
    with open(imgs[0].path, "r+b") as f:
        f.write(b"tampered")
    # Raising at the last image: everything is hashed, the corrupt one found, and still
    # nothing may move.
    with pytest.raises(ZeroDivisionError):
        cache.verify(progress=lambda d, t: d < t or 1 / 0)
    assert os.path.exists(imgs[0].path), "a stopped verify moved content"
    report = cache.verify()
    assert [p["kind"] for p in report.problems] == ["corrupt"]
    assert not os.path.exists(imgs[0].path)


@pytest.mark.parametrize("size", [200 << 10, 24 << 20], ids=["small", "pipelined"])
def test_add_tells_progress_and_an_exception_stops_it_storing_nothing(cache, make_file, size):
    """Danger: a large add that cannot be followed or stopped, or one stopped that left a
    name, a blob or a file in tmp/."""
    src = make_file("p.bin", size, seed=40)
    seen = []
    img = cache.add(src, "lab/p:1", progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1] == (size, size) and all(t == size for _, t in seen)
    cache.remove("lab/p:1")

    other = make_file("q.bin", size, seed=41)

    def stop(done, total):
        raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        cache.add(other, "lab/q:1", progress=stop)
    assert other.exists() and other.stat().st_size == size
    with pytest.raises(sregistry.NotFound):
        cache.get("lab/q:1")
    tmp = os.path.join(cache.root, "v1", "tmp")
    assert [f for f in os.listdir(tmp) if not f.startswith(".")] == []
    assert not os.path.exists(img.path)


def test_paths_are_taken_as_open_takes_them_bytes_and_pathlike_included(tmp_path, make_file):
    """Danger: a message that lists `bytes` among the path types a call takes, and a bytes
    path then refused by another message (a script that walks a tree with `os.walk(b".")`
    could not add what it found)."""
    root = os.fsencode(tmp_path / "bytes-cache")
    cache = sregistry.Cache(root)
    assert cache.root == str(tmp_path / "bytes-cache")
    src = make_file("b.bin", 2000, seed=61)
    img = cache.add(os.fsencode(src), "lab/bytes:1")
    assert cache.get("lab/bytes:1") == img.path

    class BytesPath:
        def __init__(self, p):
            self.p = p

        def __fspath__(self):
            return self.p

    img2 = cache.add(BytesPath(os.fsencode(make_file("c.bin", 2000, seed=62))), "lab/bytes:2")
    assert img2.size == 2000
    results = cache.add_many([(os.fsencode(make_file("d.bin", 2000, seed=63)), "lab/bytes:3")])
    assert [r.name for r in results] == ["lab/bytes:3"]
    assert sregistry.Cache(BytesPath(root)).root == cache.root
    # What the error for a wrong type lists, the call takes.
    with pytest.raises(TypeError) as e:
        cache.add(12, "lab/bytes:4")
    assert "bytes" in str(e.value) and "path" in str(e.value)


def test_adding_a_file_that_is_not_there_is_file_not_found(cache, tmp_path):
    """Danger: a missing file raised as the base `sregistry.Error`, so neither
    `except FileNotFoundError` nor `except ValueError` catches it."""
    missing = tmp_path / "nonexistent.sif"
    for call in (lambda: cache.add(missing, "lab/missing:1"),
                 lambda: cache.add(missing, "lab/missing:1", move=True)):
        with pytest.raises(FileNotFoundError) as e:
            call()
        assert isinstance(e.value, sregistry.InvalidInput)
        assert isinstance(e.value, sregistry.NoSuchFile)
        assert str(missing) in str(e.value)
    # add_many returns it in its place, with the same class.
    [result] = cache.add_many([(missing, "lab/missing:1")])
    assert isinstance(result, FileNotFoundError) and isinstance(result, sregistry.InvalidInput)
    assert cache.list() == []


def test_gc_takes_sizes_and_durations_as_ints(cache, make_file, monkeypatch):
    """Danger: `gc(max_size=10**9)` refused (only text such as "1G" taken) or an int read
    in another unit than bytes or seconds. Three names added an hour apart (the library's
    clock pinned with SREGISTRY_NOW), 3000 bytes each."""
    now = int(time.time())
    for i, hours in enumerate((3, 2, 1)):
        monkeypatch.setenv("SREGISTRY_NOW", str(now - hours * 3600))
        cache.add(make_file("f%d.bin" % i, 3000, seed=71 + i), "lab/f:%d" % i)
    monkeypatch.setenv("SREGISTRY_NOW", str(now))
    assert cache.gc(max_size=10**9, max_age=10**6, min_idle=0).names == []
    # 2.5 hours, in seconds: the name added 3 hours ago goes.
    report = cache.gc(max_age=9000, min_idle=0)
    assert [n["name"] for n in report.names] == ["lab/f:0"], report
    # 4000 bytes: room for one of the two left; the least recently used goes.
    report = cache.gc(max_size=4000, min_idle=0)
    assert [n["name"] for n in report.names] == ["lab/f:1"], report
    assert [i.name for i in cache.list()] == ["lab/f:2"]
    # An int min_idle is seconds too: 2 hours spares the name added an hour ago.
    assert cache.gc(max_size=0, min_idle=7200).names == []
    for bad in ({"max_size": -1}, {"max_age": -5}, {"min_idle": 2**64}):
        with pytest.raises(sregistry.InvalidInput) as e:
            cache.gc(**bad)
        assert list(bad)[0] in str(e.value)
    with pytest.raises(TypeError):
        cache.gc(max_size=1.5)


def test_add_many_takes_any_iterable(cache, make_file):
    """Danger: `add_many(generator)` raising TypeError (only a list or tuple taken), so a
    migration script must build the whole list of a million files first."""
    files = [make_file("g%d.bin" % i, 500 + i, seed=80 + i) for i in range(3)]
    results = cache.add_many((f, "lab/g:%d" % i) for i, f in enumerate(files))
    assert [r.name for r in results] == ["lab/g:0", "lab/g:1", "lab/g:2"]
    results = cache.add_many(iter([(files[0], "lab/h:0", {"k": "v"})]), batch=1)
    assert results[0].labels == {"k": "v"}


def test_add_many_refuses_a_negative_batch_naming_it(cache, make_file):
    """Danger: `batch=-1` raising a bare OverflowError from the binding, which names
    nothing and is not a ValueError."""
    f = make_file("n.bin", 500, seed=90)
    for bad in (-1, -(2**70)):
        with pytest.raises(sregistry.InvalidInput) as e:
            cache.add_many([(f, "lab/n:1")], batch=bad)
        assert isinstance(e.value, ValueError)
        assert "batch" in str(e.value)
    assert cache.list() == []


def test_moving_a_symlink_in_names_the_python_argument(cache, make_file, tmp_path):
    """Danger: a Python caller told to drop a command-line flag (`--move`) it never gave."""
    target = make_file("t.bin", 700, seed=91)
    link = tmp_path / "link.sif"
    link.symlink_to(target)
    with pytest.raises(sregistry.InvalidInput) as e:
        cache.add(link, "lab/link:1", move=True)
    assert "move=True" in str(e.value) and "move=False" in str(e.value)
    assert "--" not in str(e.value)
    assert link.is_symlink() and target.exists()
    assert cache.add(link, "lab/link:1").size == 700


def test_errors_name_python_arguments_not_command_line_flags(cache, make_file, tmp_path):
    """Danger: a Python caller told to pass `--force` or `--cache`, flags of a command it
    never ran."""
    cache.add(make_file("p1.bin", 500, seed=92), "lab/p:1")
    cache.pin("lab/p:1")
    with pytest.raises(sregistry.Pinned) as e:
        cache.add(make_file("p2.bin", 500, seed=93), "lab/p:1")
    assert "force=True" in str(e.value) and "--" not in str(e.value)
    env = {k: v for k, v in os.environ.items()
           if k not in ("SREGISTRY_CACHE", "XDG_CACHE_HOME", "HOME")}
    out = subprocess.run(
        [sys.executable, "-c", "import sregistry; sregistry.Cache()"],
        env=env, capture_output=True, text=True,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "SREGISTRY_CACHE" in last and "root" in last and "--cache" not in last, last


def test_a_move_whose_file_cannot_be_removed_warns_naming_it(cache, tmp_path):
    """Danger: `add(move=True)` of a file whose path cannot be removed (a read-only
    filesystem, a directory the caller cannot write) leaving it in place with no word: the
    caller believes it moved, and the disk holds it twice. The image is added; a
    UserWarning names the file (also from add_many)."""
    import warnings

    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this test mounts a read-only tmpfs and needs root")
        pytest.skip("needs root to mount a read-only tmpfs")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "none", str(ro)], check=True)
    try:
        one, two = ro / "one.sif", ro / "two.sif"
        one.write_bytes(b"one " * 500)
        two.write_bytes(b"two " * 500)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            image = cache.add(one, "lab/kept:1", move=True)
            results = cache.add_many([(two, "lab/kept:2")], move=True)
        assert image.size == 2000 and one.read_bytes() == b"one " * 500
        assert results[0].size == 2000 and two.exists()
        said = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
        assert len(said) == 2, said
        assert str(one) in said[0] and "copied into the cache, not moved" in said[0]
        assert str(two) in said[1]
        assert cache.verify().clean
    finally:
        subprocess.run(["umount", str(ro)], check=False)
