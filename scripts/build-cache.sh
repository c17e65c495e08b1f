#!/usr/bin/env bash
# The dependency build cache of `.ci/run`: what cargo compiled for the dependencies (the
# clippy checks, the test build, the Python extension's check and wheel, the fuzz build)
# and the cluster tests' kernel, kept outside the clone so that the next clone on the
# machine compiles only this repository's own crates.
#
#   scripts/build-cache.sh restore   copy the cache into this clone's target directories
#                                    (target/, python/target/, fuzz/target/), only those
#                                    that do not exist yet: a fresh clone
#   scripts/build-cache.sh save      after a run that passed: copy them into the cache,
#                                    unless the cache already has this key
#
# The cache lives beside the pinned tools, in $TOOLS/build-cache-KEY/ ($TOOLS is
# `${XDG_CACHE_HOME:-~/.cache}/sregistry-test-tools`). KEY is a hash of what decides the
# dependencies' builds: the three Cargo.lock and Cargo.toml files, .cargo/config.toml,
# RUSTFLAGS and the stable and nightly compilers' versions. A clone whose key has no
# entry restores the newest entry there is (cargo rebuilds what no longer matches) and
# saves its own; a save then removes every other entry, so the cache holds one build
# (about 5 GB) per machine, or a few while clones of different keys run at once.
#
# Nothing here decides what is fresh: cargo's fingerprints do, as in any target
# directory, so a stale entry costs time, never a wrong build. What this repository's own
# crates compile to (and `incremental/`) is never saved: in a clone that already built
# them, a saved copy could look newer than its sources. Entries are made in a temporary
# directory and renamed when complete; each has a lock (`build-cache-KEY.lock`) that a
# restore holds shared while it copies and a save or a removal holds exclusive.
# SREGISTRY_BUILD_CACHE=off turns both commands into no-ops.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
  restore|save) ;;
  *) echo "usage: scripts/build-cache.sh restore|save" >&2; exit 2 ;;
esac
[ "${SREGISTRY_BUILD_CACHE:-on}" != off ] || exit 0

home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
TOOLS="${XDG_CACHE_HOME:-$home/.cache}/sregistry-test-tools"
dirs=(target python/target fuzz/target)
log() { echo "build-cache: $*" >&2; }

key=$(
  {
    cat Cargo.lock Cargo.toml python/Cargo.lock python/Cargo.toml fuzz/Cargo.lock fuzz/Cargo.toml .cargo/config.toml
    echo "RUSTFLAGS=${RUSTFLAGS:-}"
    rustc -vV
    rustc "+${FUZZ_TOOLCHAIN:-nightly}" -vV 2>/dev/null || true
  } | sha256sum | cut -c1-16
)
entry="$TOOLS/build-cache-$key"

# The newest complete entry (by the time of its last use), if any.
newest() {
  local d
  d=$(ls -dt "$TOOLS"/build-cache-*/.complete 2>/dev/null | head -n1)
  [ -z "$d" ] || echo "${d%/.complete}"
}

# The cluster tests' kernel (tests/cluster/prepare.sh), restored only when it is the one
# Debian's linux-image-amd64 names today, as prepare.sh would fetch it.
kernel_is_current() { # kernel_is_current DIR
  local want
  want=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: //p' | head -n1)
  [ -n "$want" ] && [ "$(cat "$1/package" 2>/dev/null)" = "$want" ]
}

if [ "$mode" = restore ]; then
  absent=no
  for d in "${dirs[@]}"; do [ -e "$d" ] || absent=yes; done
  [ $absent = yes ] || exit 0
  src=$entry
  [ -f "$src/.complete" ] || src=$(newest)
  if [ -z "$src" ]; then
    log "no cache yet in $TOOLS (this run fills it)"
    exit 0
  fi
  start=$(date +%s)
  (
    flock -s 9
    if [ ! -f "$src/.complete" ]; then
      log "$src went away; building without it"
      exit 1
    fi
    for d in "${dirs[@]}"; do
      [ -d "$src/$d" ] && [ ! -e "$d" ] || continue
      mkdir -p "$d"
      # Partly copied files would look fresh to cargo: on any failure, none stay.
      if ! (cd "$src/$d" && tar -cf - .) | (cd "$d" && tar -xf -); then
        rm -rf "$d"
        log "could not copy $src/$d; building without it"
      fi
    done
    if [ -d "$src/kernel" ] && [ ! -e target/cluster/kernel ] && kernel_is_current "$src/kernel"; then
      mkdir -p target/cluster
      cp -a "$src/kernel" target/cluster/kernel.new && mv target/cluster/kernel.new target/cluster/kernel
    fi
    touch "$src/.complete"
  ) 9>"$src.lock" || exit 0
  log "restored $(basename "$src")$([ "$src" = "$entry" ] || echo " (this clone's key is $key)") in $(( $(date +%s) - start )) s"
  exit 0
fi

# save: a cache that cannot be written (a full disk) costs the next run time, not this one
# its result.
if [ -f "$entry/.complete" ]; then
  touch "$entry/.complete"
  exit 0
fi
# This repository's own packages and crates, whose outputs stay out of the cache.
if ! own=$(
  for manifest in Cargo.toml python/Cargo.toml fuzz/Cargo.toml; do
    cargo metadata -q --offline --no-deps --format-version 1 --manifest-path "$manifest"
  done | python3 -c '
import json, sys
for doc in sys.stdin:
    for p in json.loads(doc)["packages"]:
        print("package", p["name"])
        for t in p["targets"]:
            print("crate", t["name"].replace("-", "_"))
'
); then
  log "cannot list this repository's crates (cargo metadata); nothing saved"
  exit 0
fi
packages=()
crates=()
while read -r kind name; do
  if [ "$kind" = package ]; then packages+=("$name"); else crates+=("$name"); fi
done <<<"$own"
# Paths relative to a profile's directory (target/debug, target/<host>/release, ...).
skip=(-path target/cluster -o -path target/test-tools -o -path python/target/wheels -o -path 'fuzz/target/*.log')
for prof in debug release; do
  skip+=(-o -path "*/$prof/incremental")
  for p in "${packages[@]}"; do
    skip+=(-o -path "*/$prof/.fingerprint/$p-*" -o -path "*/$prof/build/$p-*")
  done
  for c in "${crates[@]}"; do
    # In deps/ with their hashes, and uplifted (debug/sregistry, debug/examples/embed).
    skip+=(-o -path "*/$prof/deps/$c-*" -o -path "*/$prof/deps/lib$c-*" -o -path "*/$prof/$c"
      -o -path "*/$prof/$c.d" -o -path "*/$prof/lib$c.*" -o -path "*/$prof/examples/$c"
      -o -path "*/$prof/examples/$c-*" -o -path "*/$prof/examples/lib$c-*" -o -path "*/$prof/examples/$c.d")
  done
done

mkdir -p "$TOOLS"
start=$(date +%s)
if ! (
  flock 9
  [ ! -f "$entry/.complete" ] || exit 0
  tmp="$entry.tmp"
  rm -rf "$tmp" "$entry"
  mkdir -p "$tmp"
  present=()
  for d in "${dirs[@]}"; do [ -d "$d" ] && present+=("$d"); done
  if [ ${#present[@]} -gt 0 ]; then
    find "${present[@]}" \( "${skip[@]}" \) -prune -o -print0 |
      tar --null --no-recursion -T - -cf - | (cd "$tmp" && tar -xf -)
  fi
  [ ! -f target/cluster/kernel/vmlinux ] || cp -a target/cluster/kernel "$tmp/kernel"
  mv "$tmp" "$entry"
  touch "$entry/.complete"
) 9>"$entry.lock"; then
  rm -rf "$entry.tmp"
  log "could not save $entry; the next run builds without it"
  exit 0
fi
log "saved $(basename "$entry") ($(du -sh "$entry" | cut -f1)) in $(( $(date +%s) - start )) s"

# One entry per machine: the others go (with what a save of theirs left unfinished), each
# unless a clone is restoring or saving it right now.
for other in "$TOOLS"/build-cache-*.lock; do
  other=${other%.lock}
  [ "$other" != "$entry" ] || continue
  (
    flock -n 9 || exit 0
    rm -rf "$other" "$other.tmp"
    rm -f "$other.lock"
  ) 9>"$other.lock"
done
