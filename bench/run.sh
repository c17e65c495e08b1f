#!/usr/bin/env bash
# The benchmark harness: `make bench` runs this from the repository root.
#
# It installs what it needs (hyperfine, GNU time, strace from Debian; a Python venv at
# bench/.venv with the old Python client `sregistry==0.2.39`, the anchor), builds the
# release binary and the `populate` example, measures get / list / add against their
# targets and against the Python client, prints a Markdown table and writes it into
# docs/benchmarks.md with the machine's facts.
#
#   BENCH_QUICK=1 bench/run.sh   smoke test in about a minute: 1,000 names, 200 adds,
#                                a 64 MiB file, fewer runs; writes bench/work/benchmarks-quick.md
#                                and never touches docs/benchmarks.md
#   BENCH_STRICT=1               exit 1 when a target is missed (default: report only)
#   BENCH_WAIT_QUIET=SECONDS     wait at most this long for other work on the machine to
#                                stop before measuring (default 180)
#   CARGO_TARGET_DIR             honoured (default: ./target)
#
# Work files live under bench/work/ (git-ignored); caches and big files are removed at
# the end, the raw results (hyperfine JSON, results.env, log) stay in bench/work/results/.
set -euo pipefail
export LC_ALL=C

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
# hyperfine's command lines below are split on whitespace.
[[ $ROOT != *[[:space:]]* ]] || { echo "bench: the repository path must not contain spaces: $ROOT" >&2; exit 1; }
QUICK=${BENCH_QUICK:-0}
[[ $QUICK == 0 || $QUICK == "" ]] && QUICK=0 || QUICK=1

if [[ $QUICK == 1 ]]; then
    NAMES=1000 ADDS=200 BIG_MIB=64
    GET_WARMUP=3 GET_RUNS=20 RSS_RUNS=5
    PY_IMAGES=3 PY_GET_WARMUP=1 PY_GET_RUNS=5 PY_ADDS=5
    LIST_WARMUP=1 LIST_RUNS=3
    BIG_WARMUP=1 BIG_RUNS=3
else
    NAMES=100000 ADDS=10000 BIG_MIB=1024
    GET_WARMUP=20 GET_RUNS=200 RSS_RUNS=20
    PY_IMAGES=5 PY_GET_WARMUP=3 PY_GET_RUNS=30 PY_ADDS=20
    LIST_WARMUP=2 LIST_RUNS=10
    BIG_WARMUP=1 BIG_RUNS=7
fi

WORK=$ROOT/bench/work
RUN=$WORK/run
RES=$WORK/results
VENV=$ROOT/bench/.venv
PY_PIN_SREGISTRY="sregistry==0.2.39"

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
trap 'log "error: line $LINENO failed: $BASH_COMMAND (more in bench/work/results/stderr.log)"' ERR

# ---------------------------------------------------------------- tools ------------
SUDO=()
if [[ $(id -u) != 0 ]]; then
    if command -v sudo >/dev/null; then SUDO=(sudo); fi
fi
APT_UPDATED=0
apt_install() { # apt_install PACKAGE...: install Debian packages, `apt-get update` once if needed
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1; then
        if [[ $APT_UPDATED == 0 ]]; then
            log "apt-get update"
            "${SUDO[@]}" apt-get update -q >/dev/null
            APT_UPDATED=1
        fi
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
    fi
}

need_tools() {
    local missing=()
    command -v hyperfine >/dev/null || missing+=(hyperfine)
    [[ -x /usr/bin/time ]] || missing+=(time)
    command -v strace >/dev/null || missing+=(strace)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then
        log "installing from Debian: ${missing[*]}"
        apt_install "${missing[@]}" || die "cannot install ${missing[*]}"
    fi
}

venv_ok() {
    [[ -x $VENV/bin/python && -x $VENV/bin/sregistry ]] &&
        "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as m
assert m.version("sregistry") == "0.2.39"
assert m.version("sqlalchemy") == "1.4.48"
assert m.version("spython") == "0.3.14"
EOF
}

need_venv() {
    venv_ok && return 0
    # The same pins as the old client scripts/install-deps.sh installs for the tests.
    log "creating the Python venv at bench/.venv ($PY_PIN_SREGISTRY, spython==0.3.14, sqlalchemy==1.4.48)"
    if ! python3 -m venv --clear "$VENV" >/dev/null 2>&1; then
        apt_install python3-venv
        python3 -m venv --clear "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "$PY_PIN_SREGISTRY" spython==0.3.14 sqlalchemy==1.4.48
    venv_ok || die "the venv at bench/.venv does not hold $PY_PIN_SREGISTRY"
}

# ---------------------------------------------------------------- helpers ----------
put() { printf '%s=%s\n' "$1" "$2" >>"$RES/results.env"; }

now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.6f", b - a}'; } # seconds since $1

# hf NAME hyperfine-args...: run hyperfine, export JSON to $RES/NAME.json
hf() {
    local name=$1
    shift
    hyperfine --style basic --export-json "$RES/$name.json" "$@" >>"$RES/hyperfine.log" 2>&1 ||
        die "hyperfine failed for $name (see $RES/hyperfine.log)"
}

# peak_rss KEY CMD...: largest maximum resident set size (KiB) over $RSS_RUNS runs
peak_rss() {
    local key=$1 max=0 kib i
    shift
    for ((i = 0; i < RSS_RUNS; i++)); do
        /usr/bin/time -f %M -o "$RUN/rss.txt" "$@" >/dev/null 2>>"$RES/stderr.log"
        kib=$(tail -n1 "$RUN/rss.txt")
        ((kib > max)) && max=$kib
    done
    put "$key" "$max"
}

# phase NAME: end the current part of the run and start the next (`phase end` to finish).
# For each part it records the load average at its start, and how busy the machine was
# with work other than ours: CPU time of all processes and kernel threads (/proc/stat)
# minus what this shell's descendants used (`times`), per second of the part, and the
# time stolen from this VM by its host. Another build on the 2 cores shows here.
HZ=$(getconf CLK_TCK)
PHASE='' PH_BUSY=0 PH_STEAL=0 PH_OURS=0 PH_T=0
phase() {
    local busy steal ours t
    read -r busy steal < <(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat)
    times >"$RUN/times.txt"
    ours=$(awk '{split($1, u, /[ms]/); split($2, y, /[ms]/); s += u[1] * 60 + u[2] + y[1] * 60 + y[2]}
        END {printf "%.6f", s}' "$RUN/times.txt")
    t=$EPOCHREALTIME
    if [[ -n $PHASE ]]; then
        put "other_$PHASE" "$(awk -v b0="$PH_BUSY" -v b1="$busy" -v s0="$PH_STEAL" -v s1="$steal" \
            -v o0="$PH_OURS" -v o1="$ours" -v t0="$PH_T" -v t1="$t" -v hz="$HZ" 'BEGIN {
            w = t1 - t0; other = (b1 - b0) / hz - (o1 - o0); if (other < 0) other = 0
            printf "%.2f %.2f %.1f", other / w, (s1 - s0) / hz / w, w }')"
    fi
    PHASE=$1 PH_BUSY=$busy PH_STEAL=$steal PH_OURS=$ours PH_T=$t
    if [[ $1 == end ]]; then
        PHASE=''
    else
        put "load_$1" "$(cut -d' ' -f1-3 /proc/loadavg)"
    fi
}

# child_cpu VAR: set VAR to "USER SYSTEM", the seconds this shell's finished children used
# (`times` must run in this shell, not in a command substitution's subshell)
child_cpu() {
    times >"$RUN/times.txt"
    printf -v "$1" '%s' "$(awk 'NR == 2 {
        split($1, u, /[ms]/); split($2, y, /[ms]/); printf "%.6f %.6f", u[1] * 60 + u[2], y[1] * 60 + y[2] }' "$RUN/times.txt")"
}

name_of() { local i=$1; printf 'bench/ns%d/img%d:v%d' $((i % 100)) "$i" $((i % 7)); }

# ---------------------------------------------------------------- setup ------------
need_tools
need_venv
PY=$VENV/bin/python

mkdir -p "$WORK"
rm -rf "$RUN" "$RES"
mkdir -p "$RUN" "$RES"
cleanup() { rm -rf "$RUN"; }
trap cleanup EXIT

RELEASE_DIR=$(bash "$ROOT/scripts/release-dir.sh")
log "building: cargo build --release, and the populate example"
cargo build --release -q
cargo build --release -q --example populate
BIN=$RELEASE_DIR/sregistry
POPULATE=$RELEASE_DIR/examples/populate
[[ -x $BIN && -x $POPULATE ]] || die "built binaries not found under $RELEASE_DIR"
unset SREGISTRY_NOW SREGISTRY_TEST_PAUSE SREGISTRY_LOCK SREGISTRY_LOCK_TIMEOUT

# The machine has 2 cores: wait (up to BENCH_WAIT_QUIET seconds, default 180) until other
# work uses less than a fifth of a core over 5 s, then measure whatever the state.
quiet_wait=${BENCH_WAIT_QUIET:-180}
waited=0
while :; do
    b0=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat)
    sleep 5
    b1=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat)
    busy=$(awk -v a="$b0" -v b="$b1" -v hz="$HZ" 'BEGIN {printf "%.2f", (b - a) / hz / 5}')
    awk -v x="$busy" 'BEGIN {exit !(x < 0.2)}' && break
    if ((waited >= quiet_wait)); then
        log "the machine is still busy ($busy cores used by other work): measuring anyway"
        break
    fi
    ((waited == 0)) && log "other work uses $busy cores: waiting up to ${quiet_wait}s for quiet"
    waited=$((waited + 5))
done
put waited_quiet_s "$waited"

put quick "$QUICK"
put names "$NAMES"
put adds "$ADDS"
put big_mib "$BIG_MIB"
put py_images "$PY_IMAGES"
put py_adds "$PY_ADDS"
put get_runs "$GET_RUNS"
put py_get_runs "$PY_GET_RUNS"
put list_runs "$LIST_RUNS"
put big_runs "$BIG_RUNS"
put big_warmup "$BIG_WARMUP"
put rss_runs "$RSS_RUNS"
put date "$(date -u '+%Y-%m-%d %H:%M UTC')"
put nproc "$(nproc)"
put mem_total "$(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
put cpu "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)"
put fs_type "$(df -T "$WORK" | awk 'NR==2 {print $2}')"
put fs_options "$(findmnt -no OPTIONS -T "$WORK" 2>/dev/null || true)"
put kernel "$(uname -sr)"
put hyperfine "$(hyperfine --version)"
put rustc "$(rustc --version)"
put sregistry_version "$("$BIN" --version)"
put py_client "$("$PY" -c 'import importlib.metadata as m; print("sregistry", m.version("sregistry"), "/ SQLAlchemy", m.version("sqlalchemy"))') on $("$PY" -c 'import platform; print("Python", platform.python_version())')"
put git_rev "$(git describe --always --dirty 2>/dev/null || echo none)"

# The Python client reads its home from the password database, not $HOME: point every
# path it uses at scratch directories, and check below that it wrote only there.
PYDIR=$RUN/python
export SREGISTRY_CLIENT=hub
export SREGISTRY_CLIENT_SECRETS=$PYDIR/secrets.json # absent on purpose
export SREGISTRY_CREDENTIALS_CACHE=$PYDIR/credentials
export SINGULARITY_CACHEDIR=$PYDIR/singularity-cache
export SREGISTRY_TMPDIR=$PYDIR/tmp
mkdir -p "$PYDIR" "$SREGISTRY_CREDENTIALS_CACHE" "$SINGULARITY_CACHEDIR" "$SREGISTRY_TMPDIR"
PW_HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
pw_state() { stat -c '%n %Y' "$PW_HOME/.singularity" "$PW_HOME/.sregistry" 2>/dev/null || true; }
PW_BEFORE=$(pw_state)

py_env() { # py_env DIR: use DIR as the Python client's database and storage
    export SREGISTRY_DATABASE=$1/db SREGISTRY_STORAGE=$1/storage
    mkdir -p "$SREGISTRY_DATABASE" "$SREGISTRY_STORAGE"
}

# Small random files for the add measurements (os.urandom, one process).
make_files() { # make_files DIR COUNT BYTES
    "$PY" - "$@" <<'EOF'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(d, exist_ok=True)
for i in range(n):
    with open(os.path.join(d, f"f{i}.sif"), "wb") as f:
        f.write(os.urandom(size))
EOF
}

# ---------------------------------------------------------------- a. get -----------
CACHE=$RUN/cache-names
log "populating $NAMES names"
t0=$(now)
"$POPULATE" "$CACHE" "$NAMES" 2>>"$RES/stderr.log"
put populate_s "$(since "$t0")"
GET_NAME=$(name_of $((NAMES / 2 + 7)))
"$BIN" --cache "$CACHE" get "$GET_NAME" >/dev/null || die "get $GET_NAME failed on the populated cache"

log "get: hyperfine, $GET_RUNS runs"
phase get
hf get -N --warmup "$GET_WARMUP" --runs "$GET_RUNS" "$BIN --cache $CACHE get $GET_NAME"
peak_rss get_rss_kib "$BIN" --cache "$CACHE" get "$GET_NAME"

log "Python client: adding $PY_IMAGES images, then get"
# Its names are `collection/image:tag`: it cannot store a deeper path.
py_env "$PYDIR/get"
make_files "$RUN/pyget-src" "$PY_IMAGES" 4096
for ((k = 0; k < PY_IMAGES; k++)); do
    "$VENV/bin/sregistry" add --copy --name "pyget/img$k:v1" "$RUN/pyget-src/f$k.sif" >>"$RES/stderr.log" 2>&1
done
PY_GET_NAME="pyget/img$((PY_IMAGES / 2)):v1"
py_path=$("$VENV/bin/sregistry" get "$PY_GET_NAME" 2>>"$RES/stderr.log" | tail -n1)
[[ $py_path == "$SREGISTRY_STORAGE"/* && -f $py_path ]] ||
    die "the Python client's get printed \`$py_path\`, not a file under $SREGISTRY_STORAGE"
hf py_get -N --warmup "$PY_GET_WARMUP" --runs "$PY_GET_RUNS" "$VENV/bin/sregistry get $PY_GET_NAME"
peak_rss py_get_rss_kib "$VENV/bin/sregistry" get "$PY_GET_NAME"

# ---------------------------------------------------------------- b. list ----------
log "list --json: hyperfine, $LIST_RUNS runs"
phase list
hf list -N --warmup "$LIST_WARMUP" --runs "$LIST_RUNS" --output=null "$BIN --cache $CACHE --json list"
hf list_pipe -N --warmup "$LIST_WARMUP" --runs "$LIST_RUNS" --output=pipe "$BIN --cache $CACHE --json list"
put list_bytes "$("$BIN" --cache "$CACHE" --json list | wc -c)"
put list_rows "$("$BIN" --cache "$CACHE" --json list | grep -c '"name":')"
if command -v strace >/dev/null; then
    strace -f -c -o "$RES/strace-list.txt" "$BIN" --cache "$CACHE" --json list >/dev/null 2>&1 || true
    put list_write_calls "$(awk '$NF == "write" {print $4}' "$RES/strace-list.txt")"
fi
# The 100,000-name cache is removed only after the adds: ext4 passes over recently freed
# inodes when it allocates new ones, so files created just after a large `rm -rf` are
# slower to create, which would be charged to the adds.

# ---------------------------------------------------------------- c. add -----------
log "add: $ADDS sequential adds of 4 KiB files"
phase add
make_files "$RUN/add-src" "$ADDS" 4096
ACACHE=$RUN/cache-adds
SLICE=$((ADDS / 10))
slices=()
cpu0='' cpu1=''
child_cpu cpu0
t0=$(now)
ts=$t0
for ((i = 0; i < ADDS; i++)); do
    "$BIN" --cache "$ACACHE" -q add "$RUN/add-src/f$i.sif" --name "bench/add/img$i:v1" >/dev/null
    if (((i + 1) % SLICE == 0)); then # ms per add over each tenth of the run
        slices+=("$(awk -v a="$ts" -v b="$EPOCHREALTIME" -v n="$SLICE" 'BEGIN {printf "%.2f", (b - a) / n * 1000}')")
        ts=$(now)
    fi
done
put add_total_s "$(since "$t0")"
child_cpu cpu1
put add_cpu_s "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.6f %.6f", y[1] - x[1], y[2] - x[2]}')"
put add_slices_ms "${slices[*]}"
n_added=$("$BIN" --cache "$ACACHE" --json list | grep -c '"name":')
[[ $n_added == "$ADDS" ]] || die "after $ADDS adds the cache lists $n_added names"
# What one add costs besides its own work: spawning a process from this loop.
t0=$(now)
for ((i = 0; i < 500; i++)); do /bin/true; done
put spawn_ms "$(awk -v s="$(since "$t0")" 'BEGIN {printf "%.3f", s / 500 * 1000}')"
# And what starting our own binary costs: parse the arguments, print the version, exit.
t0=$(now)
for ((i = 0; i < 500; i++)); do "$BIN" --version >/dev/null; done
put start_ms "$(awk -v s="$(since "$t0")" 'BEGIN {printf "%.3f", s / 500 * 1000}')"
if command -v strace >/dev/null; then
    make_files "$RUN/add-one" 1 4096
    strace -f -w -c -o "$RES/strace-add.txt" "$BIN" --cache "$ACACHE" -q add "$RUN/add-one/f0.sif" --name bench/add/strace:v1 >/dev/null 2>&1 || true
    put add_fsync_calls "$(awk '$NF == "fsync" || $NF == "fdatasync" {n += $4} END {print n + 0}' "$RES/strace-add.txt")"
    put add_fsync_ms "$(awk '$NF == "fsync" || $NF == "fdatasync" {s += $2} END {printf "%.2f", s * 1000}' "$RES/strace-add.txt")"
fi
rm -rf "$ACACHE" "$RUN/add-src" "$RUN/add-one" "$CACHE"

log "Python client: $PY_ADDS sequential adds"
py_env "$PYDIR/add"
make_files "$RUN/pyadd-src" "$PY_ADDS" 4096
t0=$(now)
for ((i = 0; i < PY_ADDS; i++)); do
    "$VENV/bin/sregistry" add --copy --name "pyadd/img$i:v1" "$RUN/pyadd-src/f$i.sif" >>"$RES/stderr.log" 2>&1
done
put py_add_total_s "$(since "$t0")"
py_stored=$(find "$SREGISTRY_STORAGE" -type f -name '*.sif' | wc -l)
[[ $py_stored == "$PY_ADDS" && -s $SREGISTRY_DATABASE/sregistry.db ]] ||
    die "the Python client stored $py_stored files under $SREGISTRY_STORAGE (expected $PY_ADDS) or no $SREGISTRY_DATABASE/sregistry.db"
PW_AFTER=$(pw_state)
if [[ $PW_BEFORE == "$PW_AFTER" ]]; then
    put py_writes "only the scratch database and storage (sregistry.db and $py_stored image files checked; nothing changed in the password-database home $PW_HOME)"
else
    put py_writes "WARNING: $PW_HOME/.singularity or .sregistry changed during the run"
fi

# ---------------------------------------------------------------- d. big add -------
log "add of a $BIG_MIB MiB file vs cp"
phase big
BIG=$RUN/big.bin
head -c "$((BIG_MIB * 1048576))" /dev/urandom >"$BIG"
sync
BCACHE=$RUN/cache-big
CPDST=$RUN/big.cp
# On a VM the first touch of fresh memory is slow (it can triple a first `cp` here);
# copy twice untimed so that every contender meets memory already in use.
for _ in 1 2; do cp "$BIG" "$CPDST" && rm -f "$CPDST" && sync; done
# Rounds of one run of each contender in turn, rather than all the runs of one and then
# all of the next: this VM's disk and memory speed drift over minutes, and a drift would
# otherwise land on one contender only. The first $BIG_WARMUP rounds are not reported.
for ((r = 0; r < BIG_WARMUP + BIG_RUNS; r++)); do
    round=big-$((r - BIG_WARMUP))
    ((r < BIG_WARMUP)) && round=big-warmup-$r
    hf "$round" -N --runs 1 \
        --prepare "bash -c 'rm -rf $BCACHE && sync'" \
        --prepare "bash -c 'rm -f $CPDST && sync'" \
        --prepare "bash -c 'rm -f $CPDST && sync'" \
        -n add -n cp -n "cp+sync" \
        "$BIN --cache $BCACHE -q add $BIG --name bench/big:v1" \
        "cp $BIG $CPDST" \
        "bash -c 'cp $BIG $CPDST && sync $CPDST'"
done
if command -v strace >/dev/null; then
    rm -rf "$BCACHE" && sync
    strace -f -w -c -o "$RES/strace-big.txt" "$BIN" --cache "$BCACHE" -q add "$BIG" --name bench/big:v1 >/dev/null 2>&1 || true
    put big_fsync_s "$(awk '$NF ~ /^(fsync|fdatasync|sync_file_range)$/ {s += $2} END {print s + 0}' "$RES/strace-big.txt")"
fi
rm -rf "$BCACHE" "$CPDST" "$BIG"

phase end

# ---------------------------------------------------------------- report -----------
if [[ $QUICK == 1 ]]; then
    OUT=$WORK/benchmarks-quick.md
else
    OUT=$ROOT/docs/benchmarks.md
fi
"$PY" "$ROOT/bench/report.py" "$RES" "$OUT"
log "wrote $OUT"
if [[ ${BENCH_STRICT:-0} == 1 ]] && grep -q '^missed=' "$RES/verdict.env" 2>/dev/null &&
    [[ $(sed -n 's/^missed=//p' "$RES/verdict.env") != 0 ]]; then
    exit 1
fi
