#!/usr/bin/env bash
# `sregistry migrate` of 10,000 small images from an old client's database (target: under
# 5 s), beside 10,000 sequential `sregistry add`s of the same files and the old client's own
# adds. Writes docs/benchmarks-migrate.md.
#
#   BENCH_QUICK=1     1,000 images, 20 old-client adds; writes bench/work/migrate/report.md only
#   SREGISTRY_BIN=... measure this binary instead of building the release one
#
# The database is made by the real old client (PyPI sregistry 0.2.39, SQLAlchemy 1.4.48,
# from scripts/install-deps.sh test): its own `add`, through its Python API in one process
# (tests/support/old_client.py), with SQLite's `synchronous=OFF` so that the fill takes
# minutes, not an fsync per row; the rows are the ones its `add` writes. The images are
# spread over 100 collections of 100 (the old client reads a whole collection on every
# add, so one collection of 10,000 would take hours to fill).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
quick=${BENCH_QUICK:-0}
if [ "$quick" = 1 ]; then n=1000 old_adds=20 runs=3; else n=10000 old_adds=500 runs=5; fi
work=$PWD/bench/work/migrate
rm -rf "$work"; mkdir -p "$work/in"
log() { printf '[bench migrate %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
trap 'log "failed at line $LINENO: $BASH_COMMAND (logs in $work)"' ERR

py=$(bash scripts/install-deps.sh oldclient)
[ -x "$py" ] || bash scripts/install-deps.sh test
old_bin=$(dirname "$py")/sregistry
command -v hyperfine >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null; }
if [ -n "${SREGISTRY_BIN:-}" ]; then
  bin=$SREGISTRY_BIN
else
  cargo build -q --release --bin sregistry
  bin=$(bash scripts/release-dir.sh)/sregistry
fi

log "making $n files of 4 KiB and the old client's database of $n rows"
head -c $((n * 4096)) /dev/urandom | split -a 5 -d -b 4096 - "$work/in/f"
i=0
for f in "$work"/in/f*; do
  printf '%s\tc%02d/img%d:v1\n' "$f" $((i % 100)) "$i"
  i=$((i + 1))
done > "$work/pairs"
mkdir -p "$work/old-db"
fill_start=$(date +%s%N)
OLD_CLIENT_NO_SYNC=1 SREGISTRY_DATABASE=$work/old-db SREGISTRY_STORAGE=$work/old-storage \
  "$py" tests/support/old_client.py add - < "$work/pairs" > "$work/fill.log" 2>&1
fill_s=$(( $(date +%s%N) - fill_start ))
rows=$("$py" -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from container").fetchone()[0])' "$work/old-db/sregistry.db")
[ "$rows" = "$n" ] || { log "the old client wrote $rows rows, not $n"; exit 1; }
cp -a "$work/old-storage" "$work/old-storage.pristine"

log "migrate (copy) of $n images, $runs runs, a fresh cache each"
cache=$work/cache
hyperfine -N --style basic --runs "$runs" --export-json "$work/migrate.json" \
  --prepare "rm -rf $cache" \
  "$bin --cache $cache migrate -q --from $work/old-db" > "$work/migrate.log" 2>&1
imported=$("$bin" --cache "$cache" list --json | "$py" -c 'import json,sys; print(len(json.load(sys.stdin)))')
[ "$imported" = "$n" ] || { log "migrate imported $imported names, not $n"; exit 1; }
again_start=$(date +%s%N)
"$bin" --cache "$cache" migrate -q --from "$work/old-db"
again_s=$(( $(date +%s%N) - again_start ))

log "migrate --move of $n images, $runs runs, a fresh cache and old storage each"
hyperfine -N --style basic --runs "$runs" --export-json "$work/migrate-move.json" \
  --prepare "sh -c 'rm -rf $cache $work/old-storage && cp -a $work/old-storage.pristine $work/old-storage'" \
  "$bin --cache $cache migrate -q --move --from $work/old-db" > "$work/migrate-move.log" 2>&1
rm -rf "$work/old-storage" && cp -a "$work/old-storage.pristine" "$work/old-storage"

log "$n sequential \`sregistry add\`s of the same files into a fresh cache"
rm -rf "$cache"
add_start=$(date +%s%N)
while IFS=$'\t' read -r f name; do
  "$bin" --cache "$cache" add -q "$f" --name "$name" > /dev/null
done < "$work/pairs"
add_s=$(( $(date +%s%N) - add_start ))

log "$old_adds sequential old-client \`sregistry add --copy\`s (scaled to $n)"
mkdir -p "$work/old-cli-db"
old_start=$(date +%s%N)
head -n "$old_adds" "$work/pairs" | while IFS=$'\t' read -r f name; do
  SREGISTRY_DATABASE=$work/old-cli-db SREGISTRY_STORAGE=$work/old-cli-storage \
    "$old_bin" add --copy --name "$name" "$f" > /dev/null 2>&1
done
old_s=$(( $(date +%s%N) - old_start ))

"$py" - "$work" "$n" "$old_adds" "$fill_s" "$again_s" "$add_s" "$old_s" "$quick" "$bin" <<'PY'
import json, os, platform, subprocess, sys
work, n, old_adds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fill_s, again_s, add_s, old_s = (int(x) / 1e9 for x in sys.argv[4:8])
quick, binary = sys.argv[8] == "1", sys.argv[9]
def med(name):
    r = json.load(open(os.path.join(work, name)))["results"][0]
    return r["median"], r["min"], r["max"]
m, mmin, mmax = med("migrate.json")
mv, mvmin, mvmax = med("migrate-move.json")
old_full = old_s / old_adds * n
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
target = "met" if m < 5 else "MISSED"
out = f"""# Benchmarks: `sregistry migrate`

Produced by `bash bench/migrate.sh` (part of `make bench`){' with BENCH_QUICK=1' if quick else ''}.
Machine: {os.cpu_count()} cores ({cpu}), Linux {platform.release()}; binary `{binary}`.

The old client's database: {n} rows made by the real old client (PyPI sregistry 0.2.39,
SQLAlchemy 1.4.48) through its own `add` in one Python process, with SQLite's
`synchronous=OFF` ({fill_s:.0f} s); {n} SIF-sized files of 4 KiB in 100 collections.

| what | time for {n} images | per image |
|---|---|---|
| `sregistry migrate` (copy), median of runs (min-max) | **{m:.2f} s** ({mmin:.2f}-{mmax:.2f}); target under 5 s: {target} | {m / n * 1e3:.2f} ms |
| `sregistry migrate --move`, median (min-max) | {mv:.2f} s ({mvmin:.2f}-{mvmax:.2f}) | {mv / n * 1e3:.2f} ms |
| `sregistry migrate` again (everything already there) | {again_s:.2f} s | {again_s / n * 1e3:.2f} ms |
| {n} sequential `sregistry add`s (measured in full) | {add_s:.1f} s | {add_s / n * 1e3:.2f} ms |
| the old client's `sregistry add --copy` ({old_adds} measured, scaled to {n}) | {old_full:.0f} s | {old_s / old_adds * 1e3:.0f} ms |

migrate commits 500 names per index transaction (`Cache::add_many`); each file is still
copied, hashed (BLAKE3, and sha256 against the row's version) and made durable on its
own.
"""
dest = os.path.join(work, "report.md") if quick else "docs/benchmarks-migrate.md"
open(dest, "w").write(out)
print(out)
PY
