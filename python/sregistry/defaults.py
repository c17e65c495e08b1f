"""The old client's settings module (``from sregistry.defaults import *``), with the same
names, each set to what it means for the sregistry cache.

The old client read each of these from an environment variable of its own and kept a
SQLite database and its files under ``~/.singularity``. Here the cache decides where
things live: its root is ``$SREGISTRY_CACHE``, else ``cache`` in a configuration file
(docs/configuration.md), else ``${XDG_CACHE_HOME:-~/.cache}/sregistry`` (as for
``sregistry.Cache()`` and the command line), and the other paths are inside it.
The old variables (``SREGISTRY_DATABASE``, ``SREGISTRY_STORAGE``, ``SREGISTRY_CLIENT``,
``SINGULARITY_CACHEDIR``, ``SINGULARITY_DISABLE_CACHE``, ...) are not read;
``sregistry migrate --from DIR`` brings an old database's images over once.
docs/python.md says what each name means now.

The values are computed once, when the module is first imported. A setting the cache
refuses (``SREGISTRY_LOCK_TIMEOUT=abc``) raises ``sregistry.InvalidInput`` here as it
would from ``sregistry.Cache()``.
"""

import os

from sregistry._native import Cache, credentials_path

_cache = Cache()

# The home directory the defaults are made from (``$HOME``, as the cache reads it).
USERHOME = os.environ.get("HOME") or os.path.expanduser("~")

# The cache's root directory: the old database folder's place.
SREGISTRY_BASE = _cache.root
# The index: every name, its digest, labels and pins (a redb file, not SQLite).
SREGISTRY_DATABASE = _cache.index_path
# Where the images are: one read-only file per content, named by its BLAKE3 digest.
SREGISTRY_STORAGE = _cache.blobs_dir
# Where adds and downloads are written before they are stored (on the cache's filesystem).
SREGISTRY_TMPDIR = _cache.tmp_dir
# The cache that holds what is pulled, docker:// images converted to SIF included.
SINGULARITY_CACHE = _cache.root

# The file `sregistry login` keeps registry credentials in; None without a home directory.
SREGISTRY_CLIENT_SECRETS = credentials_path()
CREDENTIAL_CACHE = SREGISTRY_CLIENT_SECRETS
DISABLE_CREDENTIAL_CACHE = False

# One client reaches every supported remote, chosen by the reference's scheme.
SREGISTRY_CLIENT = "sregistry"

# The cache, its index and TLS checks cannot be turned off.
DISABLE_CACHE = False
DISABLE_DATABASE = False
DISABLE_SSL_CHECK = False

# No thumbnails: there is no registry web page to show them.
SREGISTRY_THUMBNAIL = None

# The most threads `verify` hashes on: the CPUs this process may run on.
SREGISTRY_WORKERS = len(os.sched_getaffinity(0))

del _cache

__all__ = [
    "USERHOME",
    "SREGISTRY_BASE",
    "SREGISTRY_DATABASE",
    "SREGISTRY_STORAGE",
    "SREGISTRY_TMPDIR",
    "SINGULARITY_CACHE",
    "SREGISTRY_CLIENT_SECRETS",
    "CREDENTIAL_CACHE",
    "DISABLE_CREDENTIAL_CACHE",
    "SREGISTRY_CLIENT",
    "DISABLE_CACHE",
    "DISABLE_DATABASE",
    "DISABLE_SSL_CHECK",
    "SREGISTRY_THUMBNAIL",
    "SREGISTRY_WORKERS",
]
