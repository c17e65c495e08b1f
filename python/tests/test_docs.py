"""docs/python.md, run: every `python` block of the page as written, and what
`sregistry.defaults` says checked against the cache it describes."""

import json
import os
import re
import subprocess
import sys

import pytest

import sregistry

PAGE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "python.md")
# Services the old client reached that are gone; a block that needs one is not run.
RETIRED = ("shub://", "singularity-hub.org", "registry://", "globus://", "dropbox://")


def _blocks():
    with open(PAGE) as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_page_has_the_blocks_this_suite_runs():
    """Danger: the extraction finding nothing (a changed fence), and the test below then
    passing by running no block at all."""
    blocks = _blocks()
    assert len(blocks) >= 3
    assert any("sregistry.Cache()" in b for b in blocks)
    assert any("from sregistry.main import get_client" in b for b in blocks)
    assert any("from sregistry.defaults import *" in b for b in blocks)


@pytest.fixture
def page_world(tmp_path, registry, make_sif):
    """What the page's blocks take for granted: a working directory with the SIF files
    they name, an empty default cache, and `oras://host/lab/tool:1.2` and `:1.3` on a
    registry."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("tool.sif", "a.sif", "b.sif", "hello.sif"):
        os.replace(make_sif(name, "payload of %s" % name), work / name)
    pusher = sregistry.Cache(tmp_path / "pusher")
    for tag in ("1.2", "1.3"):
        pusher.add(make_sif("remote-%s.sif" % tag, "remote %s" % tag), "lab/tool:" + tag)
        pusher.push("lab/tool:" + tag, "oras://%s/lab/tool:%s" % (registry.addr, tag))
    env = dict(os.environ, SREGISTRY_CACHE=str(tmp_path / "cache"),
               HOME=str(tmp_path / "home"))
    for k in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "SREGISTRY_CONFIG_DIR"):
        env.pop(k, None)
    return work, env


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_every_python_block_of_the_page_runs_as_written(page_world, registry, index):
    """Danger: a snippet in docs/python.md that fails for whoever copies it (a module
    that is not there, a call whose arguments changed, steps in an order that cannot run).
    Each block runs in a fresh interpreter with the page's placeholder registry host
    (`host`) replaced by the test registry's address; nothing else is changed."""
    block = _blocks()[index]
    if any(r in block for r in RETIRED):
        pytest.skip("needs a retired service")
    work, env = page_world
    code = block.replace("oras://host/", "oras://%s/" % registry.addr)
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, "block %d of docs/python.md failed:\n%s\n%s" % (
        index, block, out.stderr)


def test_the_defaults_say_where_the_cache_keeps_each_thing(tmp_path, make_file, registry):
    """Danger: `from sregistry.defaults import *`, the first line of the old client's
    developer notes, failing (no such module), or naming places the cache does not use."""
    home = tmp_path / "home"
    env = dict(os.environ, SREGISTRY_CACHE=str(tmp_path / "cache"), HOME=str(home),
               SREGISTRY_CLIENT="docker", SREGISTRY_DATABASE=str(tmp_path / "olddb"))
    for k in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "SREGISTRY_CONFIG_DIR"):
        env.pop(k, None)
    src = make_file("d.sif", 3000, seed=5)
    script = (
        "import json, sys\n"
        "from sregistry.defaults import *\n"
        "import sregistry\n"
        "img = sregistry.Cache().add(sys.argv[1], 'lab/d:1')\n"
        "print(json.dumps(dict(image=img.path, **{k: v for k, v in globals().items()"
        " if k.isupper()})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(src)], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    root = tmp_path / "cache"
    assert d["SREGISTRY_BASE"] == str(root) == d["SINGULARITY_CACHE"]
    # The index is that file: the add wrote it, and the image is under the storage.
    assert d["SREGISTRY_DATABASE"] == str(root / "v1" / "index.redb")
    assert os.path.isfile(d["SREGISTRY_DATABASE"])
    assert d["image"].startswith(d["SREGISTRY_STORAGE"] + os.sep)
    assert os.path.isdir(d["SREGISTRY_TMPDIR"])
    assert os.path.commonpath([d["SREGISTRY_TMPDIR"], str(root)]) == str(root)
    creds = str(home / ".config" / "sregistry" / "credentials.json")
    assert d["SREGISTRY_CLIENT_SECRETS"] == creds == d["CREDENTIAL_CACHE"]
    assert d["SREGISTRY_CLIENT"] == "sregistry"
    assert d["USERHOME"] == str(home)
    assert d["DISABLE_CACHE"] is False and d["DISABLE_DATABASE"] is False
    assert d["DISABLE_SSL_CHECK"] is False and d["DISABLE_CREDENTIAL_CACHE"] is False
    assert d["SREGISTRY_THUMBNAIL"] is None
    assert d["SREGISTRY_WORKERS"] >= 1
    # Every name of the old module is there.
    assert set(d) >= {
        "USERHOME", "DISABLE_CACHE", "DISABLE_DATABASE", "DISABLE_SSL_CHECK",
        "SREGISTRY_CLIENT_SECRETS", "SREGISTRY_CLIENT", "SREGISTRY_THUMBNAIL",
        "SREGISTRY_WORKERS", "SREGISTRY_DATABASE", "SREGISTRY_STORAGE", "SREGISTRY_BASE",
        "DISABLE_CREDENTIAL_CACHE", "CREDENTIAL_CACHE", "SINGULARITY_CACHE",
        "SREGISTRY_TMPDIR",
    }
    # `sregistry login` writes where SREGISTRY_CLIENT_SECRETS says.
    binary = os.environ.get("SREGISTRY_BIN")
    if not binary:
        if os.environ.get("CI"):
            pytest.fail("SREGISTRY_BIN is not set (make test-python sets it)")
        pytest.skip("SREGISTRY_BIN is not set")
    login = subprocess.run(
        [binary, "login", registry.addr, "--username", "u", "--password-stdin"],
        input="secret\n", env=env, capture_output=True, text=True)
    assert login.returncode == 0, login.stderr
    assert os.path.isfile(creds)


def test_a_setting_the_cache_refuses_fails_the_import_naming_it(tmp_path):
    """Danger: defaults computed from a setting the cache would refuse, describing a
    cache no call can open."""
    env = dict(os.environ, SREGISTRY_CACHE=str(tmp_path / "cache"),
               SREGISTRY_LOCK_TIMEOUT="abc")
    out = subprocess.run([sys.executable, "-c", "from sregistry.defaults import *"],
                         env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "SREGISTRY_LOCK_TIMEOUT" in out.stderr and "InvalidInput" in out.stderr
