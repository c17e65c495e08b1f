"""A program that forks while threads use the cache: children (that never touch sregistry,
or that do) must not keep the cache's locks, from the parent, from other processes, or
from themselves."""

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import sregistry
from test_remote import pushed  # noqa: F401 (a fixture: an image in the registry)

# Every wait in these tests is bounded; a lock wait far shorter than the default shows a
# held lock as an error instead of a five-minute hang.
LOCK_TIMEOUT = 5


def _bin():
    path = os.environ.get("SREGISTRY_BIN")
    if not path:
        pytest.fail("SREGISTRY_BIN is not set (scripts/test-python.sh sets it)")
    return path


def _cli(root, *args):
    env = dict(os.environ, SREGISTRY_LOCK_TIMEOUT=str(LOCK_TIMEOUT))
    return subprocess.run(
        [_bin(), "--cache", str(root), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _cache_fds(pid, root):
    """The descriptors of process `pid` of the cache's lock files and index that it did not
    take itself: `index.lock`, `index.redb`, `index.journal`, the per-pull locks and other
    processes' writer locks in `locks/`. A process that wrote into the cache holds its own
    writer lock (`locks/writer-<its pid>-...`) for as long as it lives, by design: that
    is how gc knows its `tmp/` files are live (src/cache/writer.rs)."""
    v1 = os.path.realpath(os.path.join(str(root), "v1"))
    index = {os.path.join(v1, f) for f in ("index.lock", "index.redb", "index.journal")}
    own = os.path.join(v1, "locks", "writer-%d-" % pid)
    found = []
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith(own):
            continue
        if target in index or target.startswith(os.path.join(v1, "locks") + "/"):
            found.append(target)
    return found


def test_forked_children_lock_nobody_out_while_threads_write(tmp_path, make_file):
    """Danger: children forked while a thread held the index lock keeping it (an OFD lock
    lives as long as any copy of its descriptor): every other process timing out on
    `index.lock` while they live, the parent's own writer hanging, and a child that uses
    the cache waiting on its own inherited copy."""
    root = tmp_path / "cache"
    cache = sregistry.Cache(root, lock_timeout=LOCK_TIMEOUT)
    cache.add(make_file("probe.sif", 4096, seed=999), "lab/probe:1")
    files = [make_file("w%d.sif" % i, 4096, seed=i) for i in range(400)]
    child_files = [make_file("c%d.sif" % i, 4096, seed=1000 + i) for i in range(30)]

    stop = threading.Event()
    errors = []
    added = [0, 0]

    def writer(k):
        try:
            for i in range(k, len(files), 2):
                if stop.is_set():
                    return
                cache.add(files[i], "lab/w%d:1" % i)
                cache.get("lab/w%d:1" % i)
                added[k] += 1
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()

    idle_r, idle_w = os.pipe()
    children = []  # (pid, read end of its result pipe or None)
    cli_failures = []
    for n in range(30):
        uses_cache = n % 2 == 1
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            # The child. A bounded life: killed by the alarm if it hangs.
            signal.alarm(120)
            os.close(idle_w)
            os.close(res_r)
            code = 0
            if uses_cache:
                try:
                    img = cache.add(child_files[n], "lab/child%d:1" % n)
                    assert cache.get("lab/child%d:1" % n) == img.path
                    os.write(res_w, b"ok")
                except BaseException as e:  # noqa: BLE001 (reported to the parent)
                    os.write(res_w, ("error %r" % e).encode())
                    code = 1
            # Live on, holding whatever was inherited, until the parent lets go.
            os.read(idle_r, 1)
            os._exit(code)
        os.close(res_w)
        if not uses_cache:
            os.close(res_r)
        children.append((pid, res_r if uses_cache else None))
        if n % 5 == 4:
            out = _cli(root, "get", "lab/probe:1")
            if out.returncode != 0:
                cli_failures.append(out.stderr.strip())

    try:
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "the parent's writer thread hangs"
        assert errors == [], "the parent's writers failed: %r" % errors[:3]
        assert sum(added) == len(files)
        assert cli_failures == [], cli_failures[:3]

        # Every child still lives (the idle ones hold everything they inherited): another
        # process reads and writes the cache meanwhile, within the lock timeout.
        for pid, _ in children:
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "child %d ended early" % pid
        got = _cli(root, "get", "lab/probe:1")
        assert got.returncode == 0, got.stderr
        late = make_file("late.sif", 4096, seed=5000)
        added_late = _cli(root, "add", "--name", "lab/late:1", str(late))
        assert added_late.returncode == 0, added_late.stderr
        # No child holds a descriptor of the cache's lock files or index.
        for pid, _ in children:
            assert _cache_fds(pid, root) == [], "child %d kept %r" % (pid, _cache_fds(pid, root))

        # The children that used the cache did so, none stuck on its own copy of a lock.
        for pid, res_r in children:
            if res_r is not None:
                answer = os.read(res_r, 4096).decode()
                assert answer == "ok", "child %d: %s" % (pid, answer)
    finally:
        stop.set()
        os.close(idle_w)
        for pid, res_r in children:
            if res_r is not None:
                os.close(res_r)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status), "child %d was killed (hung?)" % pid
        os.close(idle_r)
    assert sregistry.Cache(root).verify().clean


PARENT = textwrap.dedent(
    """
    import os, signal, subprocess, sys, threading, time
    import sregistry

    root, remote = sys.argv[1:3]
    cache = sregistry.Cache(root)
    inside = threading.Event()

    def progress(done, total):
        # The pull holds its per-pull lock while this runs: stay here for ever.
        inside.set()
        threading.Event().wait()

    threading.Thread(target=lambda: cache.pull(remote, progress=progress), daemon=True).start()
    if not inside.wait(60):
        sys.exit("the pull never called its progress callback")
    # A child that never touches sregistry, and a program started without closing
    # descriptors: both live on after this process dies.
    # (Their output goes elsewhere: the test reads this process's to its end.)
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        time.sleep(600)
        os._exit(0)
    spawned = subprocess.Popen(["sleep", "600"], close_fds=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(pid, spawned.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_parent_killed_holding_a_pull_lock_leaves_it_to_nobody(tmp_path, pushed):
    """Danger: a child made by fork (or a program it started) holding the parent's
    per-pull lock after the parent died: every `get` of that remote, on every node,
    times out for as long as the child lives."""
    remote, _ = pushed
    root = tmp_path / "cache"
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    out = subprocess.run(
        [sys.executable, str(script), str(root), remote],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    child, spawned = (int(x) for x in out.stdout.split())
    try:
        assert _cache_fds(child, root) == []
        assert _cache_fds(spawned, root) == []
        got = _cli(root, "get", remote)
        assert got.returncode == 0, got.stderr
    finally:
        for pid in (child, spawned):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
