"""sregistry: a content-addressed container-image cache that a whole HPC cluster can share.

The modern API::

    import sregistry
    cache = sregistry.Cache()              # the command line's default cache
    img = cache.add("tool.sif", "lab/tool:1.2")
    path = cache.get("lab/tool:1.2")       # the hot path: a lookup, no copy
    path = cache.get("oras://host/lab/tool:1.2")   # pulled once, then cached

The old client's API, for existing scripts: ``from sregistry.main import get_client``.
Everything runs in the Rust library (``sregistry._native``); see docs/python.md.
"""

from sregistry import _errors
from sregistry._errors import (
    Conflict,
    Corrupt,
    Error,
    InvalidInput,
    InvalidName,
    LockTimeout,
    NoSuchFile,
    NotFound,
    Pinned,
    RemoteError,
    Report,
)
from sregistry._native import Cache, Image, __version__

__all__ = ["Cache", "Image", "__version__", *_errors.__all__]
