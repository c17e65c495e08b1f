"""Tiers through the Python package: `Cache(tiers=[...])` looks up as the command line does
(the writable cache first, then each tier), and never changes a tier."""

import os

import pytest

import sregistry


def test_a_tier_answers_what_the_writable_cache_lacks_and_is_never_changed(tmp_path, make_file):
    """Danger: the package hands out a tier's image in place of the user's own, misses a
    tier's name that the command line finds, or changes a tier."""
    tier_dir = tmp_path / "tier"
    tier = sregistry.Cache(tier_dir)
    in_tier = tier.add(make_file("t.img", 4096, seed=1), "lab/only-tier")
    tier.add(make_file("s.img", 4096, seed=2), "lab/shared")
    cache = sregistry.Cache(tmp_path / "cache", tiers=[tier_dir])
    own = cache.add(make_file("o.img", 4096, seed=3), "lab/shared")

    assert cache.get("lab/shared") == own.path
    assert cache.get("lab/only-tier") == in_tier.path
    assert cache.inspect("lab/only-tier").tier == str(tier_dir)
    listed = {(i.name, i.tier) for i in cache.list()}
    assert listed == {
        ("lab/only-tier:latest", str(tier_dir)),
        ("lab/shared:latest", None),
    }
    before = sorted(os.listdir(tier_dir / "v1"))
    for change in (
        lambda: cache.remove("lab/only-tier"),
        lambda: cache.tag("lab/only-tier", "lab/copy"),
        lambda: cache.pin("lab/only-tier"),
    ):
        with pytest.raises(sregistry.Error, match="read-only tier"):
            change()
    assert sorted(os.listdir(tier_dir / "v1")) == before
    # Without tiers, the tier's name is not found.
    with pytest.raises(sregistry.NotFound):
        sregistry.Cache(tmp_path / "cache", tiers=[]).get("lab/only-tier")


def test_one_order_private_then_shared_then_each_tier(tmp_path, make_file):
    """Danger: the package looking up in another order than the command line: the
    caller's private cache inside a shared cache, the shared cache, then each tier."""
    import json
    import subprocess

    tier_dir = tmp_path / "tier"
    tier = sregistry.Cache(tier_dir)
    tier.add(make_file("ta.img", 4096, seed=1), "lab/all")
    in_tier = tier.add(make_file("tt.img", 4096, seed=2), "lab/t")
    shared_dir = tmp_path / "shared"
    subprocess.run(
        [os.environ["SREGISTRY_BIN"], "init", "--shared", "--group", str(os.getegid()), str(shared_dir)],
        check=True,
        capture_output=True,
    )
    shared = sregistry.Cache(shared_dir)
    shared_all = shared.add(make_file("sa.img", 4096, seed=3), "lab/all")
    in_shared = shared.add(make_file("st.img", 4096, seed=4), "lab/two")
    own_dir = shared_dir / "private" / str(os.geteuid())
    mine = sregistry.Cache(own_dir).add(make_file("pa.img", 4096, seed=5), "lab/all")
    os.chmod(own_dir, 0o700)

    cache = sregistry.Cache(shared_dir, tiers=[tier_dir])
    assert cache.get("lab/all") == mine.path
    assert cache.get("lab/two") == in_shared.path
    assert cache.get("lab/t") == in_tier.path
    assert cache.inspect("lab/all").private
    assert not cache.inspect("lab/two").private
    listed = {(i.name, i.private, i.tier) for i in cache.list()}
    assert listed == {
        ("lab/all:latest", True, None),
        ("lab/t:latest", False, str(tier_dir)),
        ("lab/two:latest", False, None),
    }
    # pin acts where the name is: the private cache.
    assert cache.pin("lab/all")
    assert sregistry.Cache(own_dir).inspect("lab/all").pinned
    rows = subprocess.run(
        [os.environ["SREGISTRY_BIN"], "--cache", str(shared_dir), "--json", "list", "--all", "lab/all"],
        check=True,
        capture_output=True,
    ).stdout
    assert [(r["private"], r["pinned"]) for r in json.loads(rows)] == [(True, True), (False, False)]
    # remove acts where the name is: the private copy, then the shared one answers.
    cache.unpin("lab/all")
    cache.remove("lab/all")
    assert cache.get("lab/all") == shared_all.path
