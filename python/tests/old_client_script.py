"""A script written for the old sregistry client (0.2.x), as its "for developers" page
shows its use: get_client(), then add, get, images, inspect, rm. Kept unchanged: the
suite runs it against this package and against the real old client from PyPI, which
proves it is an old-client script that ours runs as it was.

Usage: python old_client_script.py WORKDIR
"""

import os
import sys

from sregistry.main import get_client

work = sys.argv[1]


def image_file(name, text):
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write((text * 20000).encode())
    return path


client = get_client(quiet=True)

# add moves the file into storage, unless copy=True.
src = image_file("hello-world.sif", "hello ")
container = client.add(image_path=src, image_uri="vsoch/hello-world:latest")
assert not os.path.exists(src), "add moves the file"
assert os.path.exists(container.image)
assert container.name == "hello-world"
assert container.tag == "latest"
assert container.collection.name == "vsoch"
assert container.uri.startswith("vsoch/hello-world:latest@")
assert container.version

src2 = image_file("other.sif", "other ")
other = client.add(image_path=src2, image_uri="vsoch/other:1.0", copy=True)
assert os.path.exists(src2), "copy=True leaves the file"
with open(other.image, "rb") as f, open(src2, "rb") as g:
    assert f.read() == g.read()

# get: the record, or None.
found = client.get("vsoch/hello-world:latest", quiet=True)
assert found is not None and found.image == container.image
assert client.get("vsoch/absent:latest", quiet=True) is None

# images: every record, or those matching a query.
uris = sorted(c.uri.split("@")[0] for c in client.images())
assert uris == ["vsoch/hello-world:latest", "vsoch/other:1.0"], uris
assert [c.name for c in client.images(query="other")] == ["other"]

# inspect: a dict of the record.
info = client.inspect("vsoch/hello-world:latest")
assert info["name"] == "hello-world" and info["tag"] == "latest"
assert info["collection"] == "vsoch"
assert info["image"] == container.image

# rm: removes the record and the file, returns the path.
removed = client.rm("vsoch/other:1.0")
assert removed == other.image
assert client.get("vsoch/other:1.0", quiet=True) is None
assert client.rm("vsoch/other:1.0") is None

print("old client script: ok")
