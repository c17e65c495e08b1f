#!/usr/bin/env bash
# The Python package's speed: `import sregistry` (and the old client's import beside it),
# and `Cache.get` on an open cache, per call, in process. Writes
# docs/benchmarks-python.md. BENCH_QUICK=1 runs fewer rounds and does not write the doc.
# Uses the venvs `make test-python` made (target/test-tools/pyvenv with this package,
# and the old client's venv, sregistry 0.2.39, from scripts/install-deps.sh); run that first.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${BENCH_QUICK:-0}
TOOLS="$(pwd)/${CARGO_TARGET_DIR:-target}/test-tools"
new="$TOOLS/pyvenv/bin/python"
old="${SREGISTRY_OLD_CLIENT:-$(bash scripts/install-deps.sh oldclient)}"
[ -x "$new" ] && [ -x "$old" ] || bash scripts/test-python.sh -q -k round_trip >/dev/null
work=bench/work/python
rm -rf "$work"; mkdir -p "$work"
if [ "$quick" = 1 ]; then runs=5; calls=2000; else runs=30; calls=100000; fi

# Import time: the median of RUNS fresh interpreters, less the median of a bare start.
cat > "$work/imports.py" <<'PY'
import statistics, subprocess, sys, time
py, runs, stmt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def median(code):
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([py, "-c", code], check=True, stdout=subprocess.DEVNULL)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)
bare = median("pass")
print("%.1f" % ((median(stmt) - bare) * 1000))
PY
db="$(pwd)/$work/olddb"; mkdir -p "$db"
oldenv=(env SREGISTRY_DATABASE="$db" SREGISTRY_STORAGE="$db/shub" SREGISTRY_CREDENTIALS_CACHE="$db")
imp_new=$("$new" "$work/imports.py" "$new" $runs "import sregistry")
imp_new_main=$("$new" "$work/imports.py" "$new" $runs "from sregistry.main import get_client")
imp_old=$("${oldenv[@]}" "$old" "$work/imports.py" "$old" $runs "import sregistry")
imp_old_main=$("${oldenv[@]}" "$old" "$work/imports.py" "$old" $runs "from sregistry.main import get_client")

# Cache.get on an open cache: CALLS calls of one name, in process.
head -c 1M /dev/urandom > "$work/img.sif"
get_us=$("$new" - "$work/cache" "$work/img.sif" $calls <<'PY'
import sys, time, sregistry
root, src, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sregistry.Cache(root)
c.add(src, "bench/img:1")
for _ in range(1000):
    c.get("bench/img:1")
best = None
for _ in range(5):
    t = time.perf_counter()
    for _ in range(calls // 5):
        c.get("bench/img:1")
    per = (time.perf_counter() - t) / (calls // 5) * 1e6
    best = per if best is None else min(best, per)
print("%.1f" % best)
PY
)
cpus=$(nproc)
model=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
echo "import sregistry: ${imp_new} ms (old client ${imp_old} ms); from sregistry.main import get_client: ${imp_new_main} ms (old client ${imp_old_main} ms); Cache.get: ${get_us} us/call"
[ "$quick" = 1 ] && exit 0
cat > docs/benchmarks-python.md <<MD
# Benchmarks: the Python package

Written by \`bench/python.sh\` (\`make bench\`) on $(date -u +%Y-%m-%d), ${cpus} CPUs (${model}),
CPython $("$new" -c 'import platform; print(platform.python_version())'), the extension as
\`pip install ./python\` builds it (release profile of \`python/Cargo.toml\`).

| what | sregistry | old client (0.2.39) | target |
| --- | --- | --- | --- |
| \`import sregistry\` | ${imp_new} ms | ${imp_old} ms | < 50 ms |
| \`from sregistry.main import get_client\` | ${imp_new_main} ms | ${imp_old_main} ms | |
| \`Cache.get(NAME)\` on an open cache, per call | ${get_us} µs | | < 100 µs |

Import times are the median of ${runs} fresh interpreters, less the median start of a bare
\`python -c pass\`. \`Cache.get\` is the best of 5 rounds of $((calls / 5)) calls of one
name in one process: each call parses the name, takes the shared lock, looks the name up
in the index, checks the file, and releases the GIL around it all. A whole
\`sregistry get\` process is about 1 ms (docs/benchmarks.md), most of it starting a
process: a Python program that gets many images keeps one \`Cache\` open instead.

The old client's \`import sregistry\` is cheap because its package imports nothing; what
its scripts import, \`sregistry.main\`, pulls in SQLAlchemy, requests and its backends. Ours
loads the extension on \`import sregistry\`; \`sregistry.main\` adds only Python's \`json\`,
\`datetime\`, \`re\` and \`shutil\`.
MD
echo "wrote docs/benchmarks-python.md"
