"""PEP 517 backend of the sregistry Python package: maturin, with one change.

The repository's ``.cargo/config.toml`` links the ``sregistry`` program statically
(``-C target-feature=+crt-static``, ``-C relocation-model=static`` for linux-gnu). Cargo
finds that file from ``python/`` too, and a Python extension is a shared library: with
``+crt-static`` rustc refuses to make one at all (a later ``-crt-static`` cannot undo it,
and cargo joins rather than replaces rustflags arrays from nested config files). Only the
``RUSTFLAGS`` environment variable replaces the configured flags, so this backend sets it
(to nothing, or to what the caller gave in ``SREGISTRY_PY_RUSTFLAGS``) before maturin
runs cargo. ``make python-lint`` does the same for clippy.
"""

import os

os.environ["RUSTFLAGS"] = os.environ.get("SREGISTRY_PY_RUSTFLAGS", "")
os.environ.pop("CARGO_ENCODED_RUSTFLAGS", None)

from maturin import *  # noqa: E402,F401,F403  (the PEP 517 hooks)
from maturin import build_sdist, build_wheel  # noqa: E402,F401
