#!/usr/bin/env python3
"""Drive PyPI `oras` (0.2.x) against a plain-HTTP registry, for the interop tests.

Usage:
  oras_py.py pull TARGET OUTDIR
      Pull every layer of TARGET (HOST:PORT/REPO:TAG) into OUTDIR.
  oras_py.py push TARGET FILE LAYER_MEDIA_TYPE CONFIG_MEDIA_TYPE
      Push FILE as the one layer of an artifact (title annotation = its base name),
      with a config blob of `{}` of CONFIG_MEDIA_TYPE, as `apptainer push` does.

On success the last line of stdout is a JSON object: {"files": [...], "manifest": {...}}.
Exit codes: 0 ok, 1 the operation failed, 2 usage, 4 the `oras` package is missing.
"""
import json
import os
import sys
import tempfile


def fail(code, message):
    print(message, file=sys.stderr)
    sys.exit(code)


try:
    import oras.client
except ImportError as e:
    fail(4, f"the PyPI package `oras` is not installed (pip install 'oras>=0.2,<0.3'): {e}")


def client():
    return oras.client.OrasClient(insecure=True)


def pull(target, outdir):
    c = client()
    files = c.pull(target=target, outdir=outdir)
    manifest = c.get_manifest(target)
    return {"files": [os.path.abspath(f) for f in files], "manifest": manifest}


def push(target, path, layer_type, config_type):
    c = client()
    with tempfile.TemporaryDirectory() as work:
        config = os.path.join(work, "config.json")
        with open(config, "w") as f:
            f.write("{}")
        # `path:media-type` is how oras-py takes a media type for a file or the config.
        c.push(
            target=target,
            files=[f"{os.path.abspath(path)}:{layer_type}"],
            manifest_config=f"{config}:{config_type}",
            disable_path_validation=True,
            quiet=True,
        )
    return {"files": [os.path.abspath(path)], "manifest": c.get_manifest(target)}


def main(argv):
    if len(argv) == 3 and argv[0] == "pull":
        out = pull(argv[1], argv[2])
    elif len(argv) == 5 and argv[0] == "push":
        out = push(argv[1], argv[2], argv[3], argv[4])
    else:
        fail(2, __doc__)
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except SystemExit:
        raise
    except BaseException as e:  # report one line, not a traceback
        fail(1, f"oras-py failed: {type(e).__name__}: {e}")
