"""Pulls and pushes against a real registry (docker-registry on loopback): threads pulling
at once, the GIL released during I/O, progress callbacks."""

import hashlib
import http.server
import os
import threading
import time

import pytest

import sregistry

BIG = 48 << 20


@pytest.fixture(scope="session")
def pushed(registry, tmp_path_factory):
    """A 48 MiB image pushed once with Cache.push: (remote reference, its sha256)."""
    base = tmp_path_factory.mktemp("pushed")
    src = base / "big.sif"
    with open(src, "wb") as f:
        for i in range(BIG // (1 << 20)):
            f.write(hashlib.sha256(b"%d" % i).digest() * (1 << 15))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    cache = sregistry.Cache(base / "cache")
    cache.add(src, "py/big:1")
    remote = "oras://%s/py/big:1" % registry.addr
    cache.push("py/big:1", remote)
    return remote, sha


def test_pull_names_the_image_and_get_answers_from_the_cache(tmp_path, pushed, registry):
    """Danger: get of a remote downloading again each time."""
    remote, sha = pushed
    cache = sregistry.Cache(tmp_path / "c")
    before = registry.blob_gets(sha)
    img = cache.pull(remote, name="lab/big:1")
    assert img.name == "lab/big:1" and img.size == BIG and img.source == remote
    assert img.remote_digest == "sha256:" + sha
    path = cache.get(remote)
    asked = registry.requests("py/big")
    again = cache.get(remote)
    assert path == again
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == sha
    # One download for the pull, one for the first get (another name): none for the second,
    # which does not even ask the registry.
    assert registry.blob_gets(sha) - before == 2
    assert registry.requests("py/big") == asked


def test_threads_pulling_at_once_download_once(tmp_path, pushed, registry):
    """Danger: threads of one process each downloading the image (the GIL held, or the
    pull lock not taken), or some of them getting an error or another path."""
    remote, sha = pushed
    # What one get of the remote into an empty cache asks of the registry.
    before = registry.requests("py/big")
    sregistry.Cache(tmp_path / "alone").get(remote)
    one_get = registry.requests("py/big") - before
    cache = sregistry.Cache(tmp_path / "c")
    before, before_blob = registry.requests("py/big"), registry.blob_gets(sha)
    start = threading.Barrier(6)
    results, errors = [], []

    def worker():
        start.wait()
        try:
            results.append(cache.get(remote))
        except Exception as e:  # noqa: BLE001 (collected and asserted below)
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(results) == 6 and len(set(results)) == 1
    assert registry.blob_gets(sha) - before_blob == 1
    # The five that waited asked the registry nothing: they found the first one's pull.
    assert registry.requests("py/big") - before == one_get


def _ticks_while(work):
    """How fast the main thread counts while `work` runs in another thread, relative to
    how fast it counts alone; and how long the work took."""
    def count_for(seconds):
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            n += 1
        return n / seconds

    alone = count_for(0.2)
    done = threading.Event()
    failure = []

    def run():
        try:
            work()
        except Exception as e:  # noqa: BLE001
            failure.append(e)
        done.set()

    t = threading.Thread(target=run)
    started = time.perf_counter()
    n = 0
    t.start()
    while not done.is_set():
        n += 1
    took = time.perf_counter() - started
    t.join()
    assert failure == []
    return (n / took) / alone, took


def test_the_main_thread_keeps_running_during_a_pull(tmp_path, pushed):
    """Danger: the extension holding the GIL through a download, freezing the program."""
    remote, _ = pushed
    cache = sregistry.Cache(tmp_path / "c")
    ratio, took = _ticks_while(lambda: cache.pull(remote))
    assert took > 0.05, "the pull was too quick to tell anything (%.3f s)" % took
    # Held, the main thread would not count at all while the pull runs (3% measured,
    # counting before and after it); released, it shares the CPUs with the pull.
    assert ratio > 0.1, "main thread ran at %.0f%% of its speed during the pull" % (ratio * 100)


def test_the_main_thread_keeps_running_during_a_large_add(tmp_path, make_file):
    cache = sregistry.Cache(tmp_path / "c")
    src = make_file("large.bin", 256 << 20, seed=9)
    ratio, took = _ticks_while(lambda: cache.add(src, "lab/large:1"))
    assert took > 0.05, "the add was too quick to tell anything (%.3f s)" % took
    assert ratio > 0.1, "main thread ran at %.0f%% of its speed during the add" % (ratio * 100)


def test_progress_is_told_up_to_the_whole_size(tmp_path, pushed):
    """Danger: a callback never called, called without the total, or not at the end."""
    remote, _ = pushed
    seen = []
    img = sregistry.Cache(tmp_path / "c").pull(remote, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) >= 3
    assert seen[0][0] == 0 and seen[-1] == (BIG, BIG)
    assert all(t == BIG for _, t in seen)
    dones = [d for d, _ in seen]
    assert dones == sorted(dones)
    assert img.size == BIG


def test_an_exception_in_progress_stops_the_pull_and_stores_nothing(tmp_path, pushed):
    """Danger: the pull carrying on (or committing) after its callback failed, or the
    callback's exception lost."""
    remote, _ = pushed
    cache = sregistry.Cache(tmp_path / "c")
    calls = []

    class Cancelled(Exception):
        pass

    def progress(done, total):
        calls.append(done)
        if done > 4 << 20:
            raise Cancelled("user said stop")

    with pytest.raises(Cancelled):
        cache.pull(remote, name="lab/stopped:1", progress=progress)
    # Stopped at once: no call after the one that raised.
    assert calls[-1] > 4 << 20 and all(c <= 4 << 20 for c in calls[:-1])
    with pytest.raises(sregistry.NotFound):
        cache.get("lab/stopped:1")
    tmp = os.path.join(cache.root, "v1", "tmp")
    assert [f for f in os.listdir(tmp) if not f.startswith(".")] == []
    blobs = os.path.join(cache.root, "v1", "blobs")
    assert not os.path.exists(blobs) or sum(len(fs) for _, _, fs in os.walk(blobs)) == 0
    # The next pull, without the callback, works.
    assert cache.pull(remote, name="lab/stopped:1").size == BIG


def test_remote_not_found_is_not_found(tmp_path, registry):
    cache = sregistry.Cache(tmp_path / "c")
    with pytest.raises(sregistry.NotFound):
        cache.pull("oras://%s/py/absent:1" % registry.addr)


def test_push_tells_progress_and_an_exception_stops_it_unnamed(tmp_path, registry, make_file):
    """Danger: an upload without progress, or a stopped push leaving a tag behind."""
    cache = sregistry.Cache(tmp_path / "c")
    src = make_file("up.bin", 6 << 20, seed=21)
    cache.add(src, "lab/up:1")
    seen = []
    cache.push("lab/up:1", "oras://%s/py/up:1" % registry.addr,
               progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 6 << 20) and seen[-1] == (6 << 20, 6 << 20)

    other = make_file("up2.bin", 6 << 20, seed=22)
    cache.add(other, "lab/up:2")

    def stop(done, total):
        if done > 0:
            raise KeyboardInterrupt("stop the upload")

    with pytest.raises(KeyboardInterrupt):
        cache.push("lab/up:2", "oras://%s/py/up:2" % registry.addr, progress=stop)
    with pytest.raises(sregistry.NotFound):
        sregistry.Cache(tmp_path / "d").pull("oras://%s/py/up:2" % registry.addr)


def test_a_forked_child_pulls_after_its_parent_did(tmp_path, pushed):
    """Danger: a child made by fork (multiprocessing's default on Linux before 3.14)
    hanging for ever on the parent's runtime, whose threads it does not have."""
    remote, _ = pushed
    sregistry.Cache(tmp_path / "parent").get(remote)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The child: a bounded wait, then the answer (or the error) through the pipe.
        import signal

        signal.alarm(30)
        try:
            msg = "ok " + sregistry.Cache(str(tmp_path / "child")).get(remote)
        except BaseException as e:  # noqa: BLE001 (reported to the parent)
            msg = "error %r" % e
        os.write(write, msg.encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 4096).decode()
    os.close(read)
    assert os.WIFEXITED(status), "the child was killed (hung on the parent's runtime?)"
    assert answer.startswith("ok " + str(tmp_path / "child")), answer


@pytest.fixture
def small_remote(registry, tmp_path, make_file):
    """Another image in the registry, of its own name per test (`oras://...`)."""
    cache = sregistry.Cache(tmp_path / "pusher")
    cache.add(make_file("small.sif", 300000, seed=os.getpid()), "py/small:1")
    remote = "oras://%s/py/small-%s:1" % (registry.addr, tmp_path.name.lower())
    cache.push("py/small:1", remote)
    return remote


def _bounded(call, limit=120):
    """Run `call` on a daemon thread; its result, or fail if it has not returned within
    `limit` seconds (it hangs)."""
    out = {}

    def run():
        try:
            out["value"] = call()
        except BaseException as e:  # noqa: BLE001 (re-raised below)
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), "the call hangs"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_progress_callback_that_pulls_another_remote_gets_it(tmp_path, pushed, small_remote):
    """Danger: a callback that pulls deadlocking the pull it reports on (its work spawned
    onto the runtime thread the callback blocks, where no other worker takes it)."""
    remote, _ = pushed
    cache = sregistry.Cache(tmp_path / "c", lock_timeout=600)
    inner = []

    def progress(done, total):
        if not inner:
            inner.append(cache.pull(small_remote, name="lab/inner:1"))

    outer = _bounded(lambda: cache.pull(remote, name="lab/outer:1", progress=progress))
    assert outer.size == BIG
    assert inner[0].name == "lab/inner:1" and inner[0].source == small_remote
    assert cache.get("lab/inner:1") == inner[0].path


def test_a_progress_callback_that_gets_its_own_remote_is_refused_at_once(tmp_path, pushed):
    """Danger: a callback that gets (or pulls) the remote being pulled waiting the whole
    lock timeout for its own caller's per-pull lock, then blaming another process."""
    remote, _ = pushed
    cache = sregistry.Cache(tmp_path / "c", lock_timeout=600)
    refused = []

    def progress(done, total):
        if not refused:
            for call in (lambda: cache.get(remote), lambda: cache.pull(remote)):
                try:
                    call()
                    refused.append(None)
                except sregistry.Error as e:
                    refused.append(e)

    img = _bounded(lambda: cache.pull(remote, progress=progress))
    assert img.size == BIG
    assert len(refused) == 2
    for e in refused:
        assert e is not None and not isinstance(e, sregistry.LockTimeout), repr(e)
        assert remote in str(e) and "progress callback" in str(e), str(e)
    # Outside the callback the same call works, from the cache.
    assert cache.get(remote) == img.path


def _tmp_left(root):
    tmp = root / "v1" / "tmp"
    return os.listdir(tmp) if tmp.exists() else []


def test_pulls_keep_the_free_space_SREGISTRY_MIN_FREE_asks_for(tmp_path, pushed, monkeypatch):
    """Danger: the Python package's pulls ignoring SREGISTRY_MIN_FREE, which the command
    line honours, and filling the disk every job on the node shares. Asked to keep the
    whole filesystem free, a pull and a get of a remote are refused before the download,
    name the setting, and store nothing."""
    remote, _ = pushed
    cache = sregistry.Cache(tmp_path / "c")
    fs = os.statvfs(tmp_path)
    monkeypatch.setenv("SREGISTRY_MIN_FREE", str(fs.f_blocks * fs.f_frsize))
    for call in (lambda: cache.pull(remote), lambda: cache.get(remote)):
        # No space is this machine's, not the remote's: `Error`, as the command line's
        # exit 1 and a full index say (test_error_kinds.py).
        with pytest.raises(sregistry.Error) as e:
            call()
        assert not isinstance(e.value, sregistry.RemoteError)
        assert "not enough space" in str(e.value) and "SREGISTRY_MIN_FREE" in str(e.value)
    assert cache.list() == []
    assert _tmp_left(tmp_path / "c") == []
    monkeypatch.setenv("SREGISTRY_MIN_FREE", "0")
    assert cache.pull(remote).size == BIG


class _NoLength(http.server.BaseHTTPRequestHandler):
    """Sends 4 MiB with no Content-Length (the end is the connection's close): a remote
    that declares no size, which a real registry or S3 server never is."""

    protocol_version = "HTTP/1.0"
    BODY = 4 << 20

    def _head(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_HEAD(self):
        self._head()

    def do_GET(self):
        self._head()
        chunk = b"n" * (1 << 16)
        for _ in range(self.BODY // len(chunk)):
            self.wfile.write(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture
def no_length_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoLength)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d/image.sif" % server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_download_that_declares_no_size_stops_at_SREGISTRY_MAX_DOWNLOAD(
    tmp_path, no_length_url, monkeypatch
):
    """Danger: the Python package's pulls ignoring SREGISTRY_MAX_DOWNLOAD, so an endless
    body with no length fills the disk (the command line stops it at the setting)."""
    cache = sregistry.Cache(tmp_path / "c")
    monkeypatch.setenv("SREGISTRY_MAX_DOWNLOAD", "1M")
    with pytest.raises(sregistry.RemoteError) as e:
        cache.pull(no_length_url)
    assert "SREGISTRY_MAX_DOWNLOAD" in str(e.value) and "1 MiB" in str(e.value)
    assert cache.list() == []
    assert _tmp_left(tmp_path / "c") == []
    # Within the setting, the same download is taken whole.
    monkeypatch.setenv("SREGISTRY_MAX_DOWNLOAD", "8M")
    assert cache.pull(no_length_url).size == _NoLength.BODY


def test_the_download_limits_of_a_configuration_file_hold_python_pulls(
    tmp_path, pushed, no_length_url, monkeypatch
):
    """Danger: the Python package honouring the download limits only as variables, while
    the command line takes them from its configuration files too (issue 23): `min_free` in
    the user's file and `max_download` in the file SREGISTRY_CONFIG names hold its pulls,
    read at each call, and a variable still wins over a file."""
    remote, _ = pushed
    for k in ("SREGISTRY_MIN_FREE", "SREGISTRY_MAX_DOWNLOAD", "SREGISTRY_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    xdg = tmp_path / "xdg"
    (xdg / "sregistry").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    cache = sregistry.Cache(tmp_path / "c")
    fs = os.statvfs(tmp_path)
    (xdg / "sregistry" / "config.toml").write_text(
        "min_free = %d\n" % (fs.f_blocks * fs.f_frsize)
    )
    with pytest.raises(sregistry.Error) as e:
        cache.pull(remote)
    assert "not enough space" in str(e.value)
    monkeypatch.setenv("SREGISTRY_MIN_FREE", "0")
    assert cache.pull(remote).size == BIG
    named = tmp_path / "site.toml"
    named.write_text("# site\nmax_download = \"1M\"\n")
    monkeypatch.setenv("SREGISTRY_CONFIG", str(named))
    with pytest.raises(sregistry.RemoteError) as e:
        cache.pull(no_length_url)
    assert "1 MiB" in str(e.value)
    assert _tmp_left(tmp_path / "c") == []


def test_a_fault_in_a_configuration_file_raises_naming_file_line_and_key(
    tmp_path, monkeypatch
):
    """Danger: a mistake in a configuration file that the package ignores while the
    command line refuses it (exit 2)."""
    named = tmp_path / "site.toml"
    named.write_text("retries = 2\nmin_free = \"plenty\"\n")
    monkeypatch.setenv("SREGISTRY_CONFIG", str(named))
    with pytest.raises(sregistry.InvalidInput) as e:
        sregistry.Cache(tmp_path / "c")
    assert str(e.value).startswith("`%s` line 2: `min_free = \"plenty\"`" % named), str(e.value)


@pytest.mark.parametrize("var", ["SREGISTRY_MAX_DOWNLOAD", "SREGISTRY_MIN_FREE"])
def test_a_download_limit_that_is_not_a_size_is_refused_naming_it(
    tmp_path, pushed, monkeypatch, var
):
    """Danger: a typo in a download limit silently ignored (the limit not applied) where
    the command line refuses it as a usage error."""
    remote, _ = pushed
    cache = sregistry.Cache(tmp_path / "c")
    monkeypatch.setenv(var, "plenty")
    for call in (lambda: cache.pull(remote), lambda: cache.get(remote)):
        with pytest.raises(sregistry.InvalidInput) as e:
            call()
        assert isinstance(e.value, ValueError)
        assert var in str(e.value) and "plenty" in str(e.value)
    assert cache.list() == []


def test_plain_http_refused_names_no_flag_python_cannot_pass(tmp_path):
    """Danger: a Python caller told to "pass --insecure", a flag of a command it never ran
    (the package has no way to allow plain HTTP to a host that is not loopback)."""
    cache = sregistry.Cache(tmp_path / "c")
    with pytest.raises(sregistry.InvalidInput) as e:
        cache.pull("http://example.org/x.sif")
    assert "use https" in str(e.value) and "pass --insecure" not in str(e.value)
    assert "example.org" in str(e.value)


def test_offline_answers_from_the_cache_and_asks_no_registry(tmp_path, pushed, registry, monkeypatch):
    """Danger: a compute node without a route to the registry, whose jobs run with
    SREGISTRY_OFFLINE=1, reaching for the network anyway from Python (the command line
    would not): a cached remote must come from the cache, an uncached one must be
    NotFound at once."""
    remote, sha = pushed
    cache = sregistry.Cache(tmp_path / "c")
    path = cache.get(remote)
    monkeypatch.setenv("SREGISTRY_OFFLINE", "1")
    asked = registry.requests("py/big")
    assert cache.get(remote) == path
    assert cache.pull(remote).path == path
    with pytest.raises(sregistry.NotFound) as e:
        cache.get(remote.replace("py/big:1", "py/absent:1"))
    assert "offline" in str(e.value)
    assert registry.requests("py/big") == asked
    monkeypatch.setenv("SREGISTRY_OFFLINE", "perhaps")
    with pytest.raises(sregistry.InvalidInput):
        cache.get(remote)
