"""Make an old client's database the way its users did: with the real Python client
(PyPI sregistry 0.2.39, SQLAlchemy 1.4), through its own `add`.

    python old_client.py add FILE NAME [FILE NAME ...]

Each FILE is copied (as `sregistry add --copy FILE --name NAME`) into the storage of
$SREGISTRY_STORAGE, and recorded in $SREGISTRY_DATABASE/sregistry.db; both come from the
environment, which the old client reads when it is imported (it takes the home directory
from the password database, not $HOME, so the tests always set both). Prints each row's
stored path on a line `IMAGE <path>`. Exit 4 when the client is not installed.
"""

import sys

try:
    from sregistry.main import get_client
except ImportError as e:
    print(f"the old client is missing: {e}", file=sys.stderr)
    sys.exit(4)


def main(argv):
    if len(argv) < 3 or argv[0] != "add" or len(argv) % 2 != 1:
        print(__doc__, file=sys.stderr)
        return 2
    client = get_client(quiet=True)
    pairs = argv[1:]
    for i in range(0, len(pairs), 2):
        container = client.add(image_path=pairs[i], image_uri=pairs[i + 1], copy=True)
        print("IMAGE", container.image)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
