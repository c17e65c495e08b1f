"""A `Cache` kept open answers `get` as a new one would, whatever other processes (the
command line) changed in between: the open of the index it keeps from call to call is never
used once a writer has committed (src/cache/index/kept.rs)."""

import os
import subprocess
import time

import pytest

import sregistry


def _cli(root, *args, env=None):
    path = os.environ.get("SREGISTRY_BIN")
    if not path:
        pytest.fail("SREGISTRY_BIN is not set (scripts/test-python.sh sets it)")
    subprocess.run(
        [path, "--cache", str(root), *args],
        check=True,
        capture_output=True,
        env=dict(os.environ, **(env or {})),
    )


def _answer(c, name):
    try:
        return c.get(name)
    except Exception as e:  # noqa: BLE001 (the class and message are what is compared)
        return (type(e), str(e))


def _as_fresh(cache, name):
    got = _answer(cache, name)
    assert got == _answer(sregistry.Cache(cache.root), name)
    return got


def test_a_kept_cache_answers_as_a_fresh_one_after_other_processes_write(cache, make_file):
    """Danger: a path handed out from a view of the index older than another process's
    rm, re-point or gc."""
    cache.add(make_file("a.bin", 1000, seed=1), "lab/a:1")
    cache.add(make_file("k.bin", 1000, seed=9), "lab/k:1")
    for _ in range(3):
        cache.get("lab/a:1")
    for i in range(10):
        new = make_file("v%d.bin" % i, 1000, seed=10 + i)
        _cli(cache.root, "add", str(new), "--name", "lab/a:1")
        with open(_as_fresh(cache, "lab/a:1"), "rb") as f:
            assert f.read(8) == (b"%d-" % (10 + i) * 8)[:8]
    _cli(cache.root, "rm", "lab/a:1")
    gone = _as_fresh(cache, "lab/a:1")
    assert isinstance(gone, tuple) and "lab/a:1" in gone[1]
    kept = _as_fresh(cache, "lab/k:1")
    # By gc's clock, the uses the kept Cache recorded are a month old.
    month_on = {"SREGISTRY_NOW": str(int(time.time()) + 30 * 86400)}
    _cli(cache.root, "gc", "-q", "--max-age", "15d", env=month_on)
    assert not os.path.exists(kept)
    assert isinstance(_as_fresh(cache, "lab/k:1"), tuple)


def test_a_forked_child_gets_through_an_open_of_its_own(cache, make_file):
    """Danger: a child using the descriptors its parent kept (closed in the child at the
    fork), or the parent's kept open outliving the child's changes."""
    cache.add(make_file("a.bin", 1000, seed=1), "lab/a:1")
    cache.get("lab/a:1")
    path = cache.get("lab/a:1")
    pid = os.fork()
    if pid == 0:
        try:
            ok = cache.get("lab/a:1") == path and cache.get("lab/a:1") == path
            cache.add(make_file("b.bin", 1000, seed=2), "lab/a:1")
            os._exit(0 if ok else 1)
        except BaseException:  # noqa: BLE001
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    moved = _as_fresh(cache, "lab/a:1")
    assert moved != path
    with open(moved, "rb") as f:
        assert f.read(2) == b"2-"
