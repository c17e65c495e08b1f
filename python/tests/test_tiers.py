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


def test_a_missing_tier_is_warned_of_once_per_cache_naming_it(tmp_path, make_file):
    """Danger: a node whose tier's mount is missing reads the tier as empty, and a job
    learns only "not found" for the site's images, never that the tier was not there.
    The first lookup of each `Cache` warns (a `UserWarning`) naming each missing tier, as
    the command line warns on stderr; a tier that is there is never warned of."""
    import warnings

    missing = tmp_path / "not" / "mounted"
    tier_dir = tmp_path / "tier"
    sregistry.Cache(tier_dir).add(make_file("t.img", 4096, seed=1), "lab/t")
    cache = sregistry.Cache(tmp_path / "cache", tiers=[missing, tier_dir])
    cache.add(make_file("a.img", 4096, seed=2), "lab/a")

    def warned(f):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            f()
        return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]

    def lookups():
        assert cache.get("lab/a")
        assert cache.get("lab/t")
        assert [i.name for i in cache.list()] == ["lab/a:latest", "lab/t:latest"]
        with pytest.raises(sregistry.NotFound):
            cache.get("lab/none")

    told = warned(lookups)
    assert len(told) == 1, told
    assert str(missing) in told[0] and "does not exist" in told[0], told
    assert warned(lookups) == []
    # Another Cache warns again; one whose tiers are all there never does.
    told = warned(lambda: sregistry.Cache(tmp_path / "cache", tiers=[missing]).inspect("lab/a"))
    assert len(told) == 1 and str(missing) in told[0], told
    assert warned(lambda: sregistry.Cache(tmp_path / "cache", tiers=[tier_dir]).list()) == []


def test_remove_of_a_name_that_shadowed_a_tiers_says_the_tier_now_answers(tmp_path, make_file):
    """Danger: `remove` reports the name gone while `get` now answers a tier's image of
    the same name. The report's `revealed` names the tier."""
    tier_dir = tmp_path / "tier"
    in_tier = sregistry.Cache(tier_dir).add(make_file("t.img", 4096, seed=1), "lab/both")
    cache = sregistry.Cache(tmp_path / "cache", tiers=[tier_dir])
    cache.add(make_file("o.img", 4096, seed=2), "lab/both")
    cache.add(make_file("x.img", 4096, seed=3), "lab/mine")
    report = cache.remove(["lab/both", "lab/mine"])
    assert report.revealed == [{"name": "lab/both:latest", "tier": str(tier_dir)}]
    assert cache.get("lab/both") == in_tier.path
