#!/usr/bin/env bash
# Install what the tests and the demo need, idempotently, from the package registries:
#   Debian: siftool + squashfs-tools (real SIF files), docker-registry (a real OCI
#           registry), apache2-utils (htpasswd -B), skopeo (interop), util-linux
#           (setpriv), bsdutils (script: a pseudo-terminal for the progress bar test);
#   PyPI:   oras (interop), pyjwt + cryptography (the test token server);
#   crates: s3s-fs (a real S3 server over a directory).
set -euo pipefail
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

need=()
command -v siftool >/dev/null 2>&1 || need+=(siftool)
command -v mksquashfs >/dev/null 2>&1 || need+=(squashfs-tools)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v script >/dev/null 2>&1 || need+=(bsdutils)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Debian package starts a registry on :5000 as a service; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

if ! python3 -c 'import jwt, cryptography, oras' >/dev/null 2>&1; then
  echo "installing: pyjwt cryptography oras (PyPI)" >&2
  python3 -m pip install -q --disable-pip-version-check pyjwt cryptography oras
fi

if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "installing: s3s-fs (crates.io; compiles for a few minutes)" >&2
  # From outside the repository: its .cargo/config.toml (static linking) is for sregistry.
  (cd / && cargo install -q s3s-fs --features binary --locked)
fi
