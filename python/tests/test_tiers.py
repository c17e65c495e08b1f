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
