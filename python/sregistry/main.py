"""The old sregistry client's Python API (``sregistry`` 0.2.x, its local database), over the
modern one, for existing scripts::

    from sregistry.main import get_client
    client = get_client()
    container = client.add(image_path="tool.sif", image_uri="lab/tool:1.2")
    print(container.image, container.uri)
    client.get("lab/tool:1.2")
    client.images()
    client.inspect("lab/tool:1.2")
    client.rm("lab/tool:1.2")

Same method names, arguments and return shapes; the names, content and paths live in the
sregistry cache (``sregistry.Cache()``), not in a SQLite database. docs/python.md lists
every place the behaviour differs from the old client, and why.
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import sys

from sregistry._errors import Error, InvalidInput, NoSuchFile, NotFound
from sregistry._native import Cache, default_name, is_remote

# Labels that keep what the old client kept in its database row and the cache has no
# field for: the labels `sregistry migrate` records for the rows it brings over
# (src/maintain/migrate/mod.rs, LABEL_*), so migrated images read back as they were.
VERSION_LABEL = "org.sregistry.migrate.version"
URL_LABEL = "org.sregistry.migrate.url"
METRICS_LABEL = "org.sregistry.migrate.metrics"
ROW_LABEL = "org.sregistry.migrate.row"
CREATED_LABEL = "org.sregistry.migrate.created"

# A superseded version's name: the tag, `.v.`, and 16 hex digits of the version's SHA-256
# (see `_kept_name`).
_KEPT_TAG = re.compile(r"^(?P<tag>.+)[.]v[.](?P<hash>[0-9a-f]{16})$")
_TAG_MAX = 128

_EXTENSION = re.compile(r"[.](img|simg|sif)")
_SCHEME = re.compile(r"^.+://")


def _parse(uri, tag=None, version=None):
    """An old-client image uri (``[registry/]collection/name[:tag][@version]``, with
    defaults ``library`` and ``latest``, lower-cased, any ``scheme://`` and ``.sif``
    removed) as a dict of its parts, like the old client's ``parse_image_name``."""
    if not uri:
        raise InvalidInput(
            "no image uri given: give image_uri='COLLECTION/NAME[:TAG]' (the name in the cache)"
        )
    text = _EXTENSION.sub("", _SCHEME.sub("", uri))
    if "@" in text:
        text, found = text.split("@", 1)
        version = version or found
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, found = text[:colon], text[colon + 1 :]
        tag = tag or found
    collection, _, image = text.rpartition("/")
    collection = (collection or "library").lower().rstrip("/")
    image = image.lower()
    tag = (tag or "latest").lower()
    version = version.lower() if version else None
    name = "%s/%s:%s" % (collection, image, tag)
    uri = name if version is None else "%s@%s" % (name, version)
    return {
        "collection": collection,
        "image": image,
        "tag": tag,
        "version": version,
        "name": name,
        "uri": uri,
    }


def _version_hash(version):
    return hashlib.sha256(version.encode()).hexdigest()[:16]


def _kept_name(name, version):
    """The name that keeps ``version`` of ``name`` (``collection/image:tag``) once ``name``
    points to another version: ``collection/image:tag.v.<16 hex digits of the version's
    SHA-256>``. The old client kept one row and one file per version, found by
    ``name:tag@version``; here each superseded version keeps a name of its own in the
    cache, so ``get`` finds it, ``images`` lists it, and gc spares it as any named image."""
    repo, _, tag = name.rpartition(":")
    suffix = ".v." + _version_hash(version)
    return "%s:%s%s" % (repo, tag[: _TAG_MAX - len(suffix)], suffix)


def _path(path):
    """A path argument as ``open`` takes one (``str``, ``bytes``, ``os.PathLike``), as text."""
    return os.fsdecode(os.fspath(path))


def _created(label, added):
    """When the record was made: the old row's `created_at` for a migrated image (UTC),
    else when the name was added."""
    if label:
        try:
            return datetime.datetime.strptime(label, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            pass
    return datetime.datetime.fromtimestamp(added)


class Collection(str):
    """The collection a record belongs to: its name (a ``str``), also as ``.name`` as the
    old client's database object had it."""

    @property
    def name(self):
        return str(self)


class Container:
    """A record as the old client's ``add``, ``get`` and ``images`` returned it.

    ``image`` is the path of the file (in the cache), ``uri`` is
    ``collection/name:tag@version``; ``version`` is the version given in the uri when the
    image was added, else the content's digest.
    """

    __slots__ = (
        "id",
        "name",
        "tag",
        "version",
        "image",
        "url",
        "uri",
        "client",
        "metrics",
        "created_at",
        "collection",
        "collection_id",
        "_image",
    )

    def __init__(self, img):
        collection, _, rest = img.name.rpartition("/")
        name, _, tag = rest.partition(":")
        labels = img.labels
        self._image = img
        row = labels.get(ROW_LABEL)
        self.id = int(row) if row and row.isdigit() else None
        self.collection = Collection(collection)
        self.collection_id = None
        version = labels.get(VERSION_LABEL) or img.digest
        kept = _KEPT_TAG.match(tag)
        if kept and kept.group("hash") == _version_hash(version):
            # A superseded version (see `_kept_name`): shown under the tag it had.
            tag = kept.group("tag")
        self.name = name
        self.tag = tag
        self.version = version
        self.image = img.path
        self.url = labels.get(URL_LABEL) or (
            img.source if img.source and is_remote(img.source) else None
        )
        self.uri = "%s/%s:%s@%s" % (collection, name, tag, self.version)
        self.client = "sregistry"
        self.metrics = labels.get(METRICS_LABEL, "{}")
        self.created_at = _created(labels.get(CREATED_LABEL), img.added)

    def get_uri(self):
        return self.uri

    def __repr__(self):
        return "<Container %r>" % self.uri

    __str__ = __repr__


class Client:
    """The old client's local-database methods, over a ``sregistry.Cache``.

    ``cache`` is the cache's root (default: the command line's, ``$SREGISTRY_CACHE``,
    else ``cache`` in a configuration file, else ``~/.cache/sregistry``); the old ``SREGISTRY_DATABASE`` and ``SREGISTRY_STORAGE``
    are not read (``sregistry migrate`` brings their images over).
    """

    client_name = "sregistry"
    quiet = False

    def __init__(self, quiet=None, cache=None, **kwargs):
        if quiet is not None:
            self.quiet = quiet
        self.cache = Cache(cache)
        self.storage = self.cache.root
        self.database = self.cache.root

    def __str__(self):
        return "[client|%s] [database|%s]" % (self.client_name, self.database)

    def speak(self):
        pass

    def announce(self, command=None):
        pass

    def _say(self, text):
        if not self.quiet:
            print(text)

    # -- names -------------------------------------------------------------------------

    def _find(self, name):
        """The record of ``name``, or None when the cache has no such name. With a version
        (``name:tag@version``), the record of that version: the name's own, or a superseded
        one kept under its version's name (`_kept_name`)."""
        names = _parse(name)
        wanted = [names["name"]]
        if names["version"]:
            wanted.append(_kept_name(names["name"], names["version"]))
        for cache_name in wanted:
            try:
                img = self.cache.inspect(cache_name, sif=False)
            except NotFound:
                continue
            record = Container(img)
            if not names["version"] or names["version"] == record.version:
                return record
        return None

    def _keep_current(self, name, version=None):
        """Before ``name`` is pointed at other content: give the version it holds now a
        name of its own (`_kept_name`), unless it is ``version`` (the one about to
        replace it). Returns the name made, or None."""
        for _ in range(10):
            try:
                img = self.cache.inspect(name, sif=False)
            except NotFound:
                return None
            current = Container(img).version
            if version is not None and current == version:
                return None
            kept = _kept_name(name, current)
            try:
                # `name@digest`: only the content looked at, even if the name moves now.
                self.cache.tag("%s@%s" % (name, img.digest), kept)
                return kept
            except NotFound:
                continue  # re-pointed or removed meanwhile: look again
        raise Error(
            "`%s` kept changing while its current version was being kept; try again" % name
        )

    def _forget_kept(self, kept):
        """Remove a kept version's name (its content stays when another name uses it)."""
        try:
            self.cache.remove(kept, keep_blobs=True)
        except NotFound:
            pass

    # -- the old client's methods ------------------------------------------------------

    def add(
        self,
        image_path=None,
        image_uri=None,
        image_name=None,
        url=None,
        metadata=None,
        save=True,
        copy=False,
    ):
        """Add the file at ``image_path`` under ``image_uri`` (``collection/name:tag``,
        optionally ``@version``); returns the record. As in the old client, the file is
        MOVED into the cache unless ``copy=True`` (or ``save=False``, which leaves it
        where it is)."""
        names = _parse(image_uri)
        if image_path is None:
            raise InvalidInput(
                "`%s`: the cache keeps images, not bare records; give image_path (the file to add)"
                % names["uri"]
            )
        image_path = _path(image_path)
        moving = save and not copy
        if not os.path.lexists(image_path):
            raise NoSuchFile(
                "`%s` does not exist; give the path of an image file" % image_path
            )
        if moving and os.path.islink(image_path):
            raise InvalidInput(
                "`%s` is a symbolic link; add moves the file it is given, which would move "
                "the link, not the image (give copy=True to copy the image it points to)"
                % image_path
            )
        root = os.path.realpath(self.cache.root)
        if moving and os.path.realpath(image_path).startswith(root + os.sep):
            raise InvalidInput(
                "`%s` is inside the cache `%s`; add moves files from outside it (give "
                "copy=True to give a cached image another name, or use rename)"
                % (image_path, root)
            )
        labels = {}
        if names["version"]:
            labels[VERSION_LABEL] = names["version"]
        if url is not None:
            labels[URL_LABEL] = str(url)
        if metadata:
            labels[METRICS_LABEL] = json.dumps(metadata, sort_keys=True)
        # The version the name holds now stays reachable as `name@version` (as the old
        # client's row and file per version did): kept under a name of its own first.
        kept = self._keep_current(names["name"], names["version"])
        try:
            img = self.cache.add(image_path, names["name"], move=moving, labels=labels)
        except BaseException:
            if kept is not None:
                self._forget_kept(kept)
            raise
        # The version now current needs no second name.
        self._forget_kept(_kept_name(names["name"], Container(img).version))
        if moving and os.path.exists(image_path):
            # The cache copies when it cannot take the file itself (another filesystem,
            # other links to it); the old client's add left nothing behind either way.
            os.remove(image_path)
        record = Container(img)
        self._say("[container][new] %s" % record.uri)
        return record

    def get(self, name, quiet=False):
        """The record of ``name``, or None. Prints the image's path unless ``quiet``."""
        record = self._find(name)
        if record is not None:
            # The path from `get` itself: it checks the file and records the use.
            record.image = self.cache.get(record._image.name)
            if not quiet:
                print(record.image)
        return record

    def images(self, query=None):
        """Every record, or those whose uri contains ``query``."""
        pattern = None if query is None else query.lower()
        records = [Container(img) for img in self.cache.list(pattern)]
        if records and not self.quiet:
            print("Containers:   [date]   [client]\t[uri]")
            for i, r in enumerate(records, 1):
                print(
                    "%s  %s   [%s]\t%s"
                    % (i, r.created_at.strftime("%B %d, %Y"), r.client, r.uri)
                )
        return records

    def inspect(self, name):
        """The record of ``name`` as a dict (printed as JSON unless quiet). Raises
        ``sregistry.NotFound`` (a ``KeyError``) when there is none."""
        names = _parse(name)
        found = self._find(name)
        if found is None and names["version"]:
            raise NotFound("no image `%s` in the cache" % names["uri"])
        img = self.cache.inspect(names["name"] if found is None else found._image.name)
        record = Container(img)
        try:
            metrics = json.loads(record.metrics)
        except ValueError:
            metrics = record.metrics
        fields = {
            "id": record.id,
            "name": record.name,
            "tag": record.tag,
            "version": record.version,
            "image": record.image,
            "url": record.url,
            "uri": record.uri,
            "client": record.client,
            "metrics": metrics,
            "created_at": str(record.created_at),
            "collection": str(record.collection),
            "collection_id": record.collection_id,
        }
        if img.sif is not None:
            fields["sif"] = img.sif
        if not self.quiet:
            print(json.dumps(fields, indent=4, sort_keys=True, default=str))
        return fields

    def rm(self, image_name):
        """Remove the name ``image_name``; returns the path its file had, or None when
        there was no such name. The file itself goes when no other name uses it."""
        record = self._find(image_name)
        if record is None:
            return None
        self.cache.remove(record._image.name)
        self._say("[rm] %s" % record.uri)
        return record.image

    rmi = rm

    def cp(self, move_to, image_name=None, container=None, command="copy"):
        """Copy the image out of the cache to ``move_to``; returns the record with
        ``.image`` set to the copy. The name stays in the cache."""
        if container is None:
            if image_name is None:
                raise InvalidInput("give image_name (or container) to %s" % command)
            container = self._find(image_name)
            if container is None:
                raise NotFound("no image `%s` in the cache" % image_name)
        move_to = _path(move_to)
        dirname = os.path.dirname(move_to) or "."
        if not os.path.isdir(dirname):
            raise InvalidInput("`%s` does not exist; make it first" % dirname)
        shutil.copyfile(container.image, move_to)
        container.image = move_to
        self._say("[%s] %s => %s" % (command, container.uri, move_to))
        return container

    def mv(self, image_name, path):
        """Put a copy of the image at ``path``: a file name, or a directory, where the
        copy is named ``TAG@VERSION.sif`` as the old client named its files. Returns the
        record with ``.image`` set to it. The cache keeps its own copy and the name."""
        container = self._find(image_name)
        if container is None:
            print("%s not found" % image_name, file=sys.stderr)
            return None
        path = _path(path)
        if os.path.isdir(path):
            filename = "%s@%s.sif" % (container.tag, container.version)
            target = os.path.join(os.path.abspath(path), filename)
        else:
            target = os.path.abspath(path)
        return self.cp(move_to=target, container=container, command="move")

    def rename(self, image_name, path):
        """Give the image the name ``path`` (an image uri) instead of ``image_name``;
        returns the new record, or None when there was no such name."""
        container = self._find(image_name)
        if container is None:
            print("%s not found" % image_name, file=sys.stderr)
            return None
        old, new = container._image.name, _parse(path)["name"]
        if old == new:
            return container
        # What `new` holds now stays reachable as `new@version`, as after `add`.
        kept = self._keep_current(new, container.version)
        try:
            self.cache.tag("%s@%s" % (old, container._image.digest), new)
        except BaseException:
            if kept is not None:
                self._forget_kept(kept)
            raise
        self.cache.remove(old, keep_blobs=True)
        self._forget_kept(_kept_name(new, container.version))
        return self._find(new)

    def pull(self, images, file_name=None, save=True, **kwargs):
        """Pull one remote reference or a list (``oras://``, ``docker://``, ``https://``,
        ``s3://``); returns the path, or a list of paths for several. With
        ``save=False`` the image is copied to ``file_name`` (default: a name made from
        the reference, in the current directory) and that path is returned."""
        many = isinstance(images, list)
        finished = []
        for image in images if many else [images]:
            if not is_remote(image):
                raise InvalidInput(
                    "`%s` is not a remote reference: give oras://, docker://, https:// or s3://"
                    % image
                )
            img = self.cache.pull(image)
            path = img.path
            if not save:
                # Without the query or fragment: their values (a signature, a token)
                # never become part of a file name, nor of what is printed.
                plain = image.split("#", 1)[0].split("?", 1)[0]
                target = file_name or "%s.sif" % _parse(plain)["name"].replace(
                    "/", "-"
                ).replace(":", "-")
                shutil.copyfile(path, target)
                path = os.path.abspath(target)
            self._say("Success! %s" % path)
            finished.append(path)
        return finished if many or len(finished) != 1 else finished[0]

    def push(self, path, name, tag=None):
        """Upload the file at ``path`` to ``name`` (``oras://HOST/REPO`` or
        ``s3://BUCKET/KEY``), with ``tag`` for ``oras://`` (default: the tag in ``name``,
        else ``latest``; an S3 key has no tag). The file is added to the cache first
        (copied), as the cache pushes only what it holds, under the name a pull of the
        remote gives it."""
        if not is_remote(name):
            raise InvalidInput(
                "`%s` is not a remote reference: push to oras://HOST/REPO or s3://BUCKET/KEY"
                % name
            )
        scheme, rest = name.split("://", 1)
        remote = name
        if scheme == "oras":
            slash = rest.rfind("/")
            colon = rest.rfind(":")
            if colon > slash:
                rest, found = rest[:colon], rest[colon + 1 :]
                tag = tag or found
            remote = "oras://%s:%s" % (rest, tag or "latest")
        # The name `pull` gives what it fetches from there, so a later pull finds it.
        local = default_name(remote)
        self.cache.add(path, local)
        return self.cache.push(local, remote)


def get_client(image=None, quiet=False, **kwargs):
    """A ``Client`` over the default cache, as the old ``get_client()``. ``image`` chose
    among the old client's remote backends; here every supported remote is reached
    through the same client, by the reference's scheme."""
    return Client(quiet=quiet, **kwargs)


__all__ = ["Client", "Container", "Collection", "get_client"]
