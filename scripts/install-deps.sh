#!/usr/bin/env bash
# Install what the demo or the tests need, idempotently, from the package registries.
#
#   scripts/install-deps.sh demo   siftool + squashfs-tools (the tour makes a real SIF;
#                                  docker:// conversion runs mksquashfs -tar)
#   scripts/install-deps.sh test   the above, and the test servers and peers:
#     Debian: docker-registry (a real OCI registry), apache2-utils (htpasswd -B), skopeo
#             (interop), util-linux (setpriv), bsdutils (script: a pseudo-terminal for the
#             progress bar test), umoci and busybox-static (docker:// conversion tests build
#             real images), python3-venv where `python3 -m venv` is missing;
#     PyPI:   oras, pyjwt, cryptography (interop peer, the test token server), pinned, in a
#             virtual environment at $TOOLS/venv; the old Python client sregistry 0.2.39
#             with spython and SQLAlchemy, pinned, in its own at $TOOLS/oldclient (the
#             migrate tests make its databases with it; kept off PATH, where its
#             `sregistry` would shadow ours: `scripts/install-deps.sh oldclient` prints
#             its python, which `make test` passes as SREGISTRY_OLD_CLIENT);
#     crates: s3s-fs (a real S3 server over a directory), and cargo-nextest where the
#             machine has none, pinned and --locked, into $TOOLS/bin.
#
# $TOOLS is `<target dir>/test-tools`: the build directory, so a fresh clone installs its
# own and nothing lands in the user's CARGO_HOME or site-packages. `make test` puts
# $TOOLS/bin and $TOOLS/venv/bin first on PATH; `scripts/install-deps.sh path` prints them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned versions. s3s-fs 0.15 and later need rustc 1.96; 0.14.1 builds with 1.92.
S3S_FS=0.14.1
NEXTEST=0.9.143
PY_PINS=(oras==0.2.43 pyjwt==2.15.1 cryptography==50.0.2)
OLD_CLIENT_PINS=(sregistry==0.2.39 spython==0.3.14 sqlalchemy==1.4.48)

mode=${1:-test}
TOOLS="$(pwd)/${CARGO_TARGET_DIR:-target}/test-tools"
case "$mode" in
  path) echo "$TOOLS/bin:$TOOLS/venv/bin"; exit 0 ;;
  oldclient) echo "$TOOLS/oldclient/bin/python"; exit 0 ;;
  demo|test) ;;
  *) echo "usage: scripts/install-deps.sh [demo|test|path|oldclient]" >&2; exit 2 ;;
esac

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=""
apt_install() {
  echo "installing from Debian: $*" >&2
  if [ -z "$apt_updated" ]; then $sudo apt-get update -qq >/dev/null; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

need=()
command -v siftool >/dev/null 2>&1 || need+=(siftool)
# mksquashfs (squashfs-tools 4.5+, for -tar) writes the squashfs of docker:// conversions.
command -v mksquashfs >/dev/null 2>&1 || need+=(squashfs-tools)
if [ "$mode" = test ]; then
  command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
  command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
  command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
  command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
  command -v script >/dev/null 2>&1 || need+=(bsdutils)
  command -v umoci >/dev/null 2>&1 || need+=(umoci)
  # A static busybox: the tests copy it into an image and run it there through chroot.
  dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
fi
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
[ "$mode" = test ] || exit 0

# The Debian package starts a registry on :5000 as a service; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

mkdir -p "$TOOLS"
venv="$TOOLS/venv"
stamp="$venv/.pins"
if [ "$(cat "$stamp" 2>/dev/null)" != "${PY_PINS[*]}" ]; then
  echo "installing into $venv (PyPI): ${PY_PINS[*]}" >&2
  if ! python3 -m venv --clear "$venv" >/dev/null 2>&1; then
    apt_install python3-venv
    python3 -m venv --clear "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${PY_PINS[@]}"
  echo "${PY_PINS[*]}" > "$stamp"
fi
old="$TOOLS/oldclient"
if [ "$(cat "$old/.pins" 2>/dev/null)" != "${OLD_CLIENT_PINS[*]}" ]; then
  echo "installing into $old (PyPI): ${OLD_CLIENT_PINS[*]}" >&2
  python3 -m venv --clear "$old"
  "$old/bin/python" -m pip install -q --disable-pip-version-check "${OLD_CLIENT_PINS[@]}"
  echo "${OLD_CLIENT_PINS[*]}" > "$old/.pins"
fi

# `cargo install` runs from outside the repository: its .cargo/config.toml (static
# linking, an explicit target) is for sregistry, not for the tools.
cargo_tool() { # cargo_tool BIN CRATE VERSION [ARGS...]
  local bin=$1 crate=$2 version=$3
  shift 3
  if [ ! -x "$TOOLS/bin/$bin" ] || [ "$(cat "$TOOLS/.$crate" 2>/dev/null)" != "$version" ]; then
    echo "installing $crate $version (crates.io; compiles for a few minutes)" >&2
    (cd / && cargo install -q "$crate@$version" --locked --root "$TOOLS" "$@")
    echo "$version" > "$TOOLS/.$crate"
  fi
}
cargo_tool s3s-fs s3s-fs "$S3S_FS" --features binary
command -v cargo-nextest >/dev/null 2>&1 || cargo_tool cargo-nextest cargo-nextest "$NEXTEST"
