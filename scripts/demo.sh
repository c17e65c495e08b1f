#!/usr/bin/env bash
# The tour: build, make a real SIF with siftool, add it to a cache under ./demo-cache,
# get it, list, inspect, tag, and show the exit code of a miss.
set -euo pipefail
here=$(pwd)
bin="$(bash "$(dirname "$0")/release-dir.sh")/sregistry"
export SREGISTRY_CACHE="$here/demo-cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/root"
echo "hello from a demo image" > "$work/root/hello.txt"
mksquashfs "$work/root" "$work/fs.sqfs" -noappend -quiet -all-root >/dev/null
printf 'Bootstrap: scratch\n%%files\n  hello.txt /hello.txt\n' > "$work/def"
siftool new "$work/demo.sif"
siftool add --datatype 1 "$work/demo.sif" "$work/def"
siftool add --datatype 4 --parttype 2 --partfs 1 --partarch 2 "$work/demo.sif" "$work/fs.sqfs"

step() { printf '\n$ %s\n' "$*"; "$@"; }
step "$bin" add "$work/demo.sif" --name demo/hello:1.0 --label maintainer=demo
step "$bin" get demo/hello:1.0
step "$bin" tag demo/hello:1.0 demo/hello:latest
step "$bin" list
step "$bin" inspect demo/hello:1.0
step "$bin" info
printf '\n$ %s\n' "$bin get demo/missing:1.0"
set +e
"$bin" get demo/missing:1.0
echo "(exit code $?)"
set -e
printf '\nThe cache is in %s; remove it with: rm -rf demo-cache\n' "$SREGISTRY_CACHE"
