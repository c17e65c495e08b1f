#!/usr/bin/env bash
# `get` answered by a read-only tier against `get` from the writable cache (docs/shared-cache.md#tiers):
# one 64 KiB image in a writable cache, another published as a tier (`tier publish`), then
# hyperfine rounds (300 runs each, the commands one after the other in every round) of:
#   before-writable          BEFORE get NAME (the writable cache answers; no tiers)
#   after-writable           AFTER get NAME (the same)
#   after-writable-tier-set  AFTER get NAME with a tier configured (the writable cache answers)
#   after-tier               AFTER get NAME2: the writable cache misses, the tier answers
#   after-tier-no-writable   AFTER get NAME2 on a node with no writable cache yet
# then callgrind's instruction count and strace -c's system calls of each.
#
#   bench/tiers.sh BEFORE_BINARY AFTER_BINARY [ROUNDS]   (default 6 rounds)
set -euo pipefail
before=${1:?before binary}; after=${2:?after binary}; rounds=${3:-6}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
head -c 65536 /dev/urandom >"$d/a.img"; head -c 65536 /dev/urandom >"$d/b.img"
"$after" --cache "$d/w" add "$d/a.img" --name lab/a >/dev/null
"$after" --cache "$d/staging" add "$d/b.img" --name lab/b >/dev/null
"$after" tier publish "$d/staging" "$d/site" >/dev/null 2>&1
export SREGISTRY_CACHE="$d/w"
cases=(
  "before-writable|$d/w||$before|lab/a"
  "after-writable|$d/w||$after|lab/a"
  "after-writable-tier-set|$d/w|$d/site|$after|lab/a"
  "after-tier|$d/w|$d/site|$after|lab/b"
  "after-tier-no-writable|$d/none|$d/site|$after|lab/b"
)
for r in $(seq "$rounds"); do
  args=()
  for c in "${cases[@]}"; do
    IFS='|' read -r n cache tiers bin name <<<"$c"
    args+=(-n "$n" "env SREGISTRY_CACHE=$cache SREGISTRY_TIERS=$tiers $bin get $name")
  done
  hyperfine -N -w 20 -r 300 --export-json "$d/r$r.json" "${args[@]}" >/dev/null 2>&1
done
python3 - "$d" "$rounds" <<'PY'
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
med = {}
for r in range(1, rounds + 1):
    for res in json.load(open(f"{d}/r{r}.json"))["results"]:
        med.setdefault(res["command"], []).append(res["median"] * 1e6)
for n, v in med.items():
    print(f"{n:25s} median of {rounds} rounds' medians: {statistics.median(v):5.0f} us  ({' '.join('%.0f' % x for x in v)})")
PY
for c in "${cases[@]}"; do
  IFS='|' read -r n cache tiers bin name <<<"$c"
  ir=$(env SREGISTRY_CACHE="$cache" SREGISTRY_TIERS="$tiers" valgrind --tool=callgrind \
    --callgrind-out-file=/dev/null "$bin" get "$name" 2>&1 | grep -o 'Collected : [0-9]*' | awk '{print $3}')
  env SREGISTRY_CACHE="$cache" SREGISTRY_TIERS="$tiers" strace -c -f -o "$d/sc" "$bin" get "$name" >/dev/null
  printf '%-25s %8s instructions, %s system calls\n' "$n" "$ir" "$(tail -1 "$d/sc" | awk '{print $(NF-2)}')"
done
