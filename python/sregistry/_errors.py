"""The exceptions of sregistry, and the report objects of gc, verify and remove.

Every error the library reports is an ``Error``; each message names the image or the path
involved and says what to do. The Rust side (``sregistry._native``) picks the class by the
error's kind (``python/src/lib.rs``, ``class_of``; the table in docs/python.md).
"""


class Error(Exception):
    """Base class of every sregistry error."""


class NotFound(Error, KeyError):
    """No such image: the name is not in the cache, or the remote has nothing there.

    Also a ``KeyError``, so ``except KeyError`` works as for a mapping.
    """

    def __str__(self):
        # KeyError shows repr(arg); the message reads better as it is.
        return str(self.args[0]) if self.args else ""


class InvalidName(Error, ValueError):
    """A name or remote reference that does not parse, or a name with a digest where a
    name is written."""


class InvalidInput(Error, ValueError):
    """Input that can never be added as given: a directory, an empty file, a symbolic link
    given with ``move=True``, a size or duration that does not parse."""


class NoSuchFile(InvalidInput, FileNotFoundError):
    """The file to add is not there: an ``InvalidInput`` that is also a
    ``FileNotFoundError`` (an ``OSError``), as ``open`` would raise."""


class LockTimeout(Error, TimeoutError):
    """Another process held the cache's lock for longer than the lock timeout."""


class Corrupt(Error):
    """Content that no longer matches its digest, a file missing or cut short, a file
    renamed or copied over a blob from outside sregistry, or a damaged index:
    ``Cache.verify(repair=True)`` (or ``sregistry doctor``) mends it."""


class Conflict(Error):
    """The name or the file is not in the state the call needs: the name holds an image
    pulled from another remote, it was re-pointed meanwhile, the file changed while it was
    added, or the name is pinned (``Pinned``)."""


class Pinned(Conflict):
    """The name is pinned: unpin it first (or pass ``force=True`` to re-point it)."""


class RemoteError(Error):
    """A pull or a push failed at the remote end (network, status, credentials, space)."""


class Report(dict):
    """What gc, verify or remove did: a dict whose keys are also attributes."""

    def __init__(self, kind, fields):
        super().__init__(fields)
        self._kind = kind

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def clean(self):
        """For a verify report: true when no problem was found."""
        return not self.get("problems")

    def __repr__(self):
        return "%s(%s)" % (self._kind, dict.__repr__(self))


__all__ = [
    "Error",
    "NotFound",
    "InvalidName",
    "InvalidInput",
    "NoSuchFile",
    "LockTimeout",
    "Corrupt",
    "Conflict",
    "Pinned",
    "RemoteError",
    "Report",
]
