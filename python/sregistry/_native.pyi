"""Type stubs of the native module (python/src/lib.rs)."""

import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from sregistry._errors import Error, Report

__version__: str

Progress = Callable[[int, Optional[int]], Any]
"""progress(done, total): bytes in so far, and the size when known."""

class Image:
    """One name in the cache and everything known about it."""

    @property
    def name(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def size(self) -> Optional[int]: ...
    @property
    def added(self) -> int: ...
    @property
    def last_used(self) -> Optional[int]: ...
    @property
    def pinned(self) -> bool: ...
    @property
    def source(self) -> Optional[str]: ...
    @property
    def labels(self) -> Dict[str, str]: ...
    @property
    def media_type(self) -> Optional[str]: ...
    @property
    def remote_digest(self) -> Optional[str]: ...
    @property
    def sif(self) -> Optional[Dict[str, Any]]: ...
    def __fspath__(self) -> str: ...

class Cache:
    """A handle on a cache directory; safe to share between threads."""

    def __init__(
        self,
        root: Union[str, "os.PathLike[str]", None] = None,
        lock_timeout: Optional[float] = None,
    ) -> None: ...
    @property
    def root(self) -> str: ...
    def add(
        self,
        path: Union[str, "os.PathLike[str]"],
        name: str,
        move: bool = False,
        labels: Optional[Dict[str, str]] = None,
        force: bool = False,
        progress: Optional[Progress] = None,
    ) -> Image: ...
    def add_many(
        self,
        items: List[Union[Tuple[str, str], Tuple[str, str, Dict[str, str]]]],
        move: bool = False,
        batch: int = 0,
        progress: Optional[Progress] = None,
    ) -> List[Union[Image, Error]]: ...
    def get(self, name: str, progress: Optional[Progress] = None) -> str: ...
    def list(self, pattern: Optional[str] = None) -> List[Image]: ...
    def inspect(self, name: str, sif: bool = True) -> Image: ...
    def tag(self, source: str, target: str, force: bool = False) -> Image: ...
    def remove(self, names: Union[str, List[str]], keep_blobs: bool = False) -> Report: ...
    def pin(self, name: str) -> bool: ...
    def unpin(self, name: str) -> bool: ...
    def pull(
        self,
        remote: str,
        name: Optional[str] = None,
        force: bool = False,
        progress: Optional[Progress] = None,
    ) -> Image: ...
    def push(self, name: str, remote: str, progress: Optional[Progress] = None) -> str: ...
    def gc(
        self,
        max_size: Union[int, str, None] = None,
        max_age: Union[int, str, None] = None,
        min_idle: Union[int, str, None] = None,
        dry_run: bool = False,
        progress: Optional[Progress] = None,
    ) -> Report: ...
    def verify(
        self,
        names: Optional[List[str]] = None,
        repair: bool = False,
        progress: Optional[Progress] = None,
    ) -> Report: ...

def is_remote(s: str) -> bool: ...
