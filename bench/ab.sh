#!/usr/bin/env bash
# A/B of two builds of sregistry on this machine, for a change's before and after:
# sequential `add`s of 4 KiB files alternating add by add (each build into its own fresh
# cache), then `get` on the cache each filled (hyperfine, alternating rounds).
#
#   bench/ab.sh BEFORE_BINARY AFTER_BINARY [ADDS]     (default 400 adds each)
#   AB_DIR=/dev/shm/x bench/ab.sh ...                 a tmpfs: no flush costs anything
#
# Prints the median, 10th and 90th percentile of each. Alternating add by add cancels
# most of what other work on the machine does to both; run it on a quiet machine anyway.
set -euo pipefail
a=${1:?before binary}; b=${2:?after binary}; n=${3:-400}
dir=${AB_DIR:-$(mktemp -d)}
mkdir -p "$dir/in"
trap 'rm -rf "$dir/cA" "$dir/cB" "$dir/in" "$dir/tA" "$dir/tB"' EXIT
head -c $((n * 4096)) /dev/urandom | split -a 5 -d -b 4096 - "$dir/in/f"
: > "$dir/tA"; : > "$dir/tB"
i=0
for f in "$dir"/in/f*; do
  name=ab$((i % 100))/img$i:v1
  t0=$EPOCHREALTIME; "$a" --cache "$dir/cA" -q add "$f" --name "$name" > /dev/null; t1=$EPOCHREALTIME
  "$b" --cache "$dir/cB" -q add "$f" --name "$name" > /dev/null; t2=$EPOCHREALTIME
  echo "$t0 $t1" >> "$dir/tA"; echo "$t1 $t2" >> "$dir/tB"
  i=$((i + 1))
done
for x in A B; do
  awk '{print ($2 - $1) * 1000}' "$dir/t$x" | sort -n |
    awk -v x=$x '{v[NR] = $1} END {printf "add %s: median %.3f ms, p10 %.3f, p90 %.3f (%d adds)\n", x, v[int(NR / 2)], v[int(NR / 10)], v[int(NR * 9 / 10)], NR}'
done
command -v hyperfine > /dev/null || { echo "get: hyperfine not installed, skipped" >&2; exit 0; }
for round in 1 2; do
  for x in A B; do
    bin=$a; cache=$dir/cA
    [ $x = B ] && bin=$b && cache=$dir/cB
    hyperfine -N --warmup 20 --runs 300 --export-json "$dir/g.json" \
      "$bin --cache $cache get ab5/img5:v1" > /dev/null 2>&1
    python3 -c "import json,sys; r = json.load(open(sys.argv[1]))['results'][0]; print('get %s round %s: median %.3f ms' % (sys.argv[2], sys.argv[3], r['median'] * 1000))" "$dir/g.json" $x $round
  done
done
