#!/usr/bin/env bash
# Fuzzing for sregistry (cargo-fuzz / libFuzzer, nightly Rust).
#
#   fuzz/run.sh [SECONDS]     fuzz every target for SECONDS (default 60) one after another,
#                             adding what it finds to fuzz/corpus/<target>/
#   fuzz/run.sh --keep-going [SECONDS]
#                             the same, but a crash does not stop the target: libFuzzer's
#                             fork mode with one child (-fork=1 -ignore_crashes=1); crashes
#                             are kept in fuzz/artifacts/<target>/
#   fuzz/run.sh --replay      build every target and run the committed corpus and
#                             fuzz/regressions/<target>/ once; non-zero on any crash (CI)
#
# Environment: FUZZ_TARGETS="sif units" to run only some targets; FUZZ_TOOLCHAIN
# (default "nightly") for the `cargo +TOOLCHAIN` used.
# One fuzzer process runs at a time (no -jobs/-workers/-fork: libFuzzer's single process).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

toolchain="${FUZZ_TOOLCHAIN:-nightly}"
all_targets=(reference remote_ref sif oci_manifest www_authenticate units index_record)
read -r -a targets <<<"${FUZZ_TARGETS:-${all_targets[*]}}"
# Limits every run uses: memory as the brief for sif asks, and a per-input time limit.
common=(-rss_limit_mb=512 -timeout=10)

die() { echo "fuzz/run.sh: $*" >&2; exit 2; }

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
    die "no '$toolchain' Rust toolchain (cargo-fuzz needs nightly: rustup toolchain install nightly)"
fi
# cargo-fuzz, pinned and --locked, built once per version outside the clone
# (scripts/install-deps.sh keeps it with the other test tools).
fuzz_bin=$(bash ../scripts/install-deps.sh cargo-fuzz)
export PATH="$fuzz_bin:$PATH"

# Corpus and regression directories of a target that exist.
dirs_of() {
    local t="$1" d
    for d in "corpus/$t" "regressions/$t"; do
        [[ -d "$d" ]] && printf '%s\n' "$d"
    done
    return 0
}

dict_of() {
    [[ -f "dicts/$1.dict" ]] && printf '%s\n' "-dict=dicts/$1.dict"
    return 0
}

if [[ "${1:-}" == "--replay" ]]; then
    # An unoptimised build compiles much faster than the release one, and replaying a
    # small corpus once needs no speed.
    build=(--dev)
    cargo "+$toolchain" fuzz build "${build[@]}"
    failed=()
    for t in "${targets[@]}"; do
        mapfile -t dirs < <(dirs_of "$t")
        [[ ${#dirs[@]} -gt 0 ]] || die "no corpus for target $t"
        n=$(find "${dirs[@]}" -type f | wc -l)
        echo "== replay $t: $n inputs from ${dirs[*]}"
        if ! cargo "+$toolchain" fuzz run "${build[@]}" "$t" "${dirs[@]}" -- \
            -runs=0 "${common[@]}" >"target/replay-$t.log" 2>&1; then
            {
                echo "-- $t crashed (full log: fuzz/target/replay-$t.log):"
                grep -aE -A1 'panicked at' "target/replay-$t.log" | head -n 6
                grep -aE '^==[0-9]+== ERROR|^SUMMARY|Test unit written|^Base64' "target/replay-$t.log"
            } >&2
            failed+=("$t")
        else
            grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "target/replay-$t.log" | tail -n 1 || true
        fi
    done
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "fuzz replay: ${#targets[@]} targets, ${#failed[@]} failed: ${failed[*]}" >&2
        echo "$(( ${#targets[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
        exit 1
    fi
    echo "${#targets[@]} passed, 0 failed"
    exit 0
fi

keep_going=()
if [[ "${1:-}" == "--keep-going" ]]; then
    keep_going=(-fork=1 -ignore_crashes=1)
    shift
fi
secs="${1:-60}"
[[ "$secs" =~ ^[0-9]+$ ]] || die "usage: fuzz/run.sh [--keep-going] [SECONDS] | --replay"
cargo "+$toolchain" fuzz build
mkdir -p target
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    mapfile -t dict < <(dict_of "$t")
    echo "== fuzz $t for ${secs}s"
    # New inputs go to the first directory, corpus/<target>; crashes to artifacts/<target>/.
    set +e
    cargo "+$toolchain" fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" "${common[@]}" "${dict[@]}" "${keep_going[@]}" >"target/fuzz-$t.log" 2>&1
    status=$?
    set -e
    if [[ ${#keep_going[@]} -gt 0 ]]; then
        grep -aE '^#[0-9]+: cov' "target/fuzz-$t.log" | tail -n 1 || true
        grep -aE 'panicked at' "target/fuzz-$t.log" | sort | uniq -c || true
    else
        grep -aE '^#[0-9]+[[:space:]]+DONE|^==[0-9]+== ERROR|panicked at|^SUMMARY' "target/fuzz-$t.log" || true
    fi
    if [[ $status -ne 0 ]]; then
        echo "fuzz/run.sh: $t failed (exit $status); see fuzz/target/fuzz-$t.log and fuzz/artifacts/$t/" >&2
        failed+=("$t")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz/run.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz/run.sh: all targets ran ${secs}s; new corpus files: git status fuzz/corpus"
