#!/usr/bin/env bash
# Install what the demo or the tests need, idempotently, from the package registries.
#
#   scripts/install-deps.sh demo   siftool + squashfs-tools (the tour makes a real SIF;
#                                  docker:// conversion runs mksquashfs -tar)
#   scripts/install-deps.sh test   the above, and the test servers and peers:
#     Debian: docker-registry (a real OCI registry), apache2-utils (htpasswd -B), skopeo
#             (interop), util-linux (setpriv), bsdutils (script: a pseudo-terminal for the
#             progress bar test), strace (the order of add's fsyncs), umoci and busybox-static (docker:// conversion tests build
#             real images), python3-venv where `python3 -m venv` is missing;
#     PyPI:   oras, pyjwt, cryptography (interop peer, the test token server), pinned, in a
#             virtual environment; the old Python client sregistry 0.2.39 with spython and
#             SQLAlchemy, pinned, in one of its own (the migrate tests make its databases
#             with it; kept off PATH, where its `sregistry` would shadow ours:
#             `scripts/install-deps.sh oldclient` prints its python, which `make test`
#             passes as SREGISTRY_OLD_CLIENT);
#     crates: s3s-fs (a real S3 server over a directory), and cargo-nextest where the
#             machine has none, pinned and --locked.
#
# Each pinned tool has a directory of its own named by its version, outside the clone:
# $TOOLS/NAME-VERSION, where $TOOLS is `${XDG_CACHE_HOME:-~/.cache}/sregistry-test-tools`.
# A tool found there complete is used as it is; one that is not is built there (under a
# lock, so that two clones installing at once build it once), and a new pin is a new
# directory. Nothing lands in the user's CARGO_HOME or site-packages. `make test` puts the
# tools' `bin` directories first on PATH; `scripts/install-deps.sh path` prints them.
# `scripts/install-deps.sh cargo-fuzz` installs cargo-fuzz there (for fuzz/run.sh) and
# prints its `bin`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned versions. s3s-fs 0.15 and later need rustc 1.96; 0.14.1 builds with 1.92.
S3S_FS=0.14.1
NEXTEST=0.9.143
CARGO_FUZZ=0.13.2
PY_PINS=(oras==0.2.43 pyjwt==2.15.1 cryptography==50.0.2)
OLD_CLIENT_PINS=(sregistry==0.2.39 spython==0.3.14 sqlalchemy==1.4.48)

mode=${1:-test}
home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
TOOLS="${XDG_CACHE_HOME:-$home/.cache}/sregistry-test-tools"
# The venvs depend on the python that made them: its version is part of their names.
pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
dirname_of() { # dirname_of NAME PINS...: NAME-VERSION, the pins as name-version joined by _
  local name=$1 IFS=_
  shift
  local pins="$*"
  echo "$TOOLS/$name-${pins//==/-}"
}
s3s_dir="$TOOLS/s3s-fs-$S3S_FS"
nextest_dir="$TOOLS/cargo-nextest-$NEXTEST"
fuzz_dir="$TOOLS/cargo-fuzz-$CARGO_FUZZ"
venv=$(dirname_of "venv-py$pyver" "${PY_PINS[@]}")
old=$(dirname_of "oldclient-py$pyver" "${OLD_CLIENT_PINS[@]}")
# tool DIR BUILD...: run BUILD (a command that fills DIR) unless DIR is complete (it has a
# `.complete` stamp), under a lock on DIR.lock; an unfinished DIR is cleared first.
tool() {
  local dir=$1
  shift
  [ -f "$dir/.complete" ] && return 0
  mkdir -p "$TOOLS"
  (
    flock 9
    if [ ! -f "$dir/.complete" ]; then
      rm -rf "$dir"
      mkdir -p "$dir"
      "$@"
      touch "$dir/.complete"
    fi
  ) 9>"$dir.lock"
}
# `cargo install` runs from outside the repository: its .cargo/config.toml (static
# linking, an explicit target) is for sregistry, not for the tools.
cargo_tool() { # cargo_tool DIR CRATE VERSION [ARGS...]
  local dir=$1 crate=$2 version=$3
  shift 3
  echo "installing $crate $version (crates.io; compiles for a few minutes, once)" >&2
  (cd / && cargo install -q "$crate@$version" --locked --root "$dir" "$@")
}
case "$mode" in
  # fuzz/run.sh: cargo-fuzz only; prints the directory to put on PATH.
  cargo-fuzz) tool "$fuzz_dir" cargo_tool "$fuzz_dir" cargo-fuzz "$CARGO_FUZZ"; echo "$fuzz_dir/bin"; exit 0 ;;
  path) echo "$s3s_dir/bin:$nextest_dir/bin:$venv/bin"; exit 0 ;;
  oldclient) echo "$old/bin/python"; exit 0 ;;
  demo|test) ;;
  *) echo "usage: scripts/install-deps.sh [demo|test|path|oldclient|cargo-fuzz]" >&2; exit 2 ;;
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
  # strace: a test watches the order of add's fsyncs, links and index writes.
  command -v strace >/dev/null 2>&1 || need+=(strace)
  # A static busybox: the tests copy it into an image and run it there through chroot.
  dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
fi
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
[ "$mode" = test ] || exit 0

# The Debian package starts a registry on :5000 as a service; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# A venv at $1 with the pins that follow (a venv cannot be moved: it is made in place).
make_venv() {
  local dir=$1
  shift
  echo "installing into $dir (PyPI): $*" >&2
  if ! python3 -m venv --clear "$dir" >/dev/null 2>&1; then
    apt_install python3-venv
    python3 -m venv --clear "$dir"
  fi
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
}
# A venv whose python went away (the system's python changed) is made again.
for v in "$venv" "$old"; do
  if [ -f "$v/.complete" ] && ! "$v/bin/python" -c '' >/dev/null 2>&1; then rm -f "$v/.complete"; fi
done
tool "$venv" make_venv "$venv" "${PY_PINS[@]}"
tool "$old" make_venv "$old" "${OLD_CLIENT_PINS[@]}"

tool "$s3s_dir" cargo_tool "$s3s_dir" s3s-fs "$S3S_FS" --features binary
if ! command -v cargo-nextest >/dev/null 2>&1; then
  tool "$nextest_dir" cargo_tool "$nextest_dir" cargo-nextest "$NEXTEST"
fi
