#!/usr/bin/env bash
# Install what the tests and the demo need, once, from Debian's packages:
# siftool and mksquashfs (real SIF files), cargo-nextest is used when present.
set -euo pipefail
need=()
command -v siftool >/dev/null 2>&1 || need+=(siftool)
command -v mksquashfs >/dev/null 2>&1 || need+=(squashfs-tools)
command -v mkfifo >/dev/null 2>&1 || need+=(coreutils)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
