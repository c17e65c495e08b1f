#!/usr/bin/env bash
# The Python suite (python/tests/), as CI runs it: the package installed by
# `pip install ./python` into a virtual environment made afresh for each run, pytest
# pinned. The old client (sregistry 0.2.39 from PyPI, which `scripts/install-deps.sh test`
# installs into a venv of its own) runs the old-client script too.
#
# Extra arguments go to pytest (`bash scripts/test-python.sh -k gil`).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$(pwd)/${CARGO_TARGET_DIR:-target}/test-tools"
PYTEST_PIN="pytest==9.2.0"

venv="$TOOLS/pyvenv"
python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$PYTEST_PIN"
start=$(date +%s)
"$venv/bin/python" -m pip install -q --disable-pip-version-check ./python
echo "pip install ./python: $(( $(date +%s) - start )) s" >&2

export PATH="$(bash scripts/install-deps.sh path):$PATH"
export SREGISTRY_OLD_CLIENT="${SREGISTRY_OLD_CLIENT:-$(bash scripts/install-deps.sh oldclient)}"
# The command line, for the test that migrates an old database and reads it back here:
# the one `make test` built, else a debug build.
bin="target/$(rustc -vV | sed -n 's/^host: //p')/debug/sregistry"
[ -x "$bin" ] || cargo build -q --bin sregistry
export SREGISTRY_BIN="${SREGISTRY_BIN:-$(pwd)/$bin}"
# From python/tests: the installed package is imported, not the sources in python/.
cd python/tests
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
