"""Render the results of bench/run.sh as Markdown: print the table, write the document.

usage: report.py RESULTS_DIR OUTPUT.md

RESULTS_DIR holds results.env (key=value lines) and hyperfine's JSON exports (get, py_get,
list, list_pipe, big). Writes RESULTS_DIR/verdict.env (missed=N). Standard library only.
"""

import json
import os
import sys


def load_env(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
    return out


def load_hf(res, name):
    """hyperfine results by command name (or index)."""
    with open(os.path.join(res, name + ".json")) as f:
        results = json.load(f)["results"]
    return results


def merge_rounds(res, prefix, rounds):
    """One hyperfine-like result per command from `rounds` exports PREFIX-0 ... (one run
    of each command per round), and the per-round times by command."""
    times, users, systems = {}, {}, {}
    for r in range(rounds):
        for x in load_hf(res, f"{prefix}-{r}"):
            times.setdefault(x["command"], []).extend(x["times"])
            users.setdefault(x["command"], []).append(x["user"])
            systems.setdefault(x["command"], []).append(x["system"])
    out = {}
    for cmd, t in times.items():
        n = len(t)
        mean = sum(t) / n
        out[cmd] = {
            "command": cmd,
            "times": t,
            "median": median(t),
            "mean": mean,
            "stddev": (sum((x - mean) ** 2 for x in t) / (n - 1)) ** 0.5 if n > 1 else 0,
            "min": min(t),
            "max": max(t),
            "user": sum(users[cmd]) / len(users[cmd]),
            "system": sum(systems[cmd]) / len(systems[cmd]),
        }
    return out


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def ms(s):
    return f"{s * 1000:.2f} ms" if s < 0.1 else f"{s * 1000:.0f} ms"


def secs(s):
    return f"{s:.2f} s" if s < 100 else f"{s:.0f} s"


def mb(kib):
    return f"{kib * 1024 / 1e6:.1f} MB"


def num(n):
    return f"{int(n):,}"


def verdict(ok):
    return "**pass**" if ok else "**MISSED**"


def main():
    res, out_path = sys.argv[1], sys.argv[2]
    e = load_env(os.path.join(res, "results.env"))
    quick = e["quick"] == "1"
    names = int(e["names"])
    adds = int(e["adds"])
    big_mib = int(e["big_mib"])
    big_label = f"{big_mib // 1024} GiB" if big_mib >= 1024 else f"{big_mib} MiB"

    get = load_hf(res, "get")[0]
    py_get = load_hf(res, "py_get")[0]
    lst = load_hf(res, "list")[0]
    lst_pipe = load_hf(res, "list_pipe")[0]
    big = merge_rounds(res, "big", int(e["big_runs"]))
    b_add, b_cp, b_cps = big["add"], big["cp"], big["cp+sync"]
    # The same ratio within each round (the contenders ran back to back), for the drift.
    paired = median([a / c for a, c in zip(b_add["times"], b_cp["times"])])

    get_rss = int(e["get_rss_kib"])
    py_rss = int(e["py_get_rss_kib"])
    add_total = float(e["add_total_s"])
    add_each = add_total / adds
    py_adds = int(e["py_adds"])
    py_add_total = float(e["py_add_total_s"])
    py_add_each = py_add_total / py_adds
    ratio = b_add["median"] / b_cp["median"]
    ratio_sync = b_add["median"] / b_cps["median"]

    checks = {
        "get": get["median"] < 0.003,
        "rss": get_rss * 1024 < 10e6,
        "list": lst["median"] < 0.5,
        # 30 s for 10,000 adds: 3 ms each on average (scales to BENCH_QUICK's count).
        "add": add_each < 0.003,
        "big": ratio <= 1.5,
    }
    missed = [k for k, ok in checks.items() if not ok]

    rows = [
        (
            f"`get` on a cache of {num(names)} names: median wall time of the whole process "
            f"(hyperfine, {e['get_runs']} runs)",
            ms(get["median"]),
            f"Python `sregistry get` on {e['py_images']} images: {ms(py_get['median'])} "
            f"({e['py_get_runs']} runs)",
            "< 3 ms",
            verdict(checks["get"]),
        ),
        (
            f"`get`: peak RSS (largest of {e['rss_runs']} runs, `/usr/bin/time -f %M`)",
            mb(get_rss),
            f"Python `sregistry get`: {mb(py_rss)}",
            "< 10 MB",
            verdict(checks["rss"]),
        ),
        (
            f"`list --json` of {num(names)} names, stdout to /dev/null: median "
            f"({e['list_runs']} runs)",
            secs(lst["median"]),
            "—",
            "< 0.5 s",
            verdict(checks["list"]),
        ),
        (
            f"{num(adds)} sequential `add`s of distinct 4 KiB files (one process each, "
            "fresh cache): total wall time",
            f"{secs(add_total)} ({ms(add_each)} per add)",
            f"Python `sregistry add --copy`: {ms(py_add_each)} per add over {py_adds} adds; "
            f"**extrapolated** to {num(adds)}: {secs(py_add_each * adds)}",
            "< 30 s for 10,000 (3 ms per add)",
            verdict(checks["add"]),
        ),
        (
            f"`add` (copy) of a {big_label} random file vs `cp` on the same filesystem: "
            f"median ({e['big_runs']} rounds, one run of each per round)",
            f"{secs(b_add['median'])} = **{ratio:.2f}× cp** (median of the rounds' own "
            f"ratios: {paired:.2f}×)",
            f"`cp`: {secs(b_cp['median'])}; `cp` + `sync`: {secs(b_cps['median'])} "
            f"(add = {ratio_sync:.2f}× that)",
            "≤ 1.5× cp",
            verdict(checks["big"]),
        ),
    ]
    table = ["| measure | sregistry | anchor | target | result |", "|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    table_md = "\n".join(table)

    details = [
        "| benchmark | median | mean ± σ | min | max | user | system | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def drow(label, r):
        details.append(
            f"| {label} | {ms(r['median'])} | {ms(r['mean'])} ± {ms(r['stddev'] or 0)} | "
            f"{ms(r['min'])} | {ms(r['max'])} | {ms(r['user'])} | {ms(r['system'])} | "
            f"{len(r['times'])} |"
        )

    drow(f"`get`, {num(names)} names", get)
    drow(f"Python `sregistry get`, {e['py_images']} images", py_get)
    drow("`list --json` → /dev/null", lst)
    drow("`list --json` → pipe", lst_pipe)
    drow(f"`add` {big_label}", b_add)
    drow(f"`cp` {big_label}", b_cp)
    drow(f"`cp` + `sync` {big_label}", b_cps)
    details_md = "\n".join(details)

    findings = []
    if "get" in missed or "rss" in missed:
        findings.append(
            f"* **`get`** missed a target (median {ms(get['median'])}, peak {mb(get_rss)}); "
            "see the user/system split above."
        )
    if "list" in missed:
        nbytes = int(e.get("list_bytes", "0"))
        writes = e.get("list_write_calls", "")
        line = (
            f"* **`list --json`** takes {secs(lst['median'])} (user {ms(lst['user'])}, "
            f"system {ms(lst['system'])}) for {num(e.get('list_rows', names))} entries, "
            f"{nbytes / 1e6:.1f} MB of pretty-printed JSON."
        )
        if writes and int(writes) > 1000:
            line += (
                f" `strace -c` counts **{num(writes)} `write(2)` calls** for it, "
                f"{nbytes / max(int(writes), 1):.0f} bytes each on average: the output "
                "goes through Rust's line-buffered `stdout` (a `write` per line of pretty "
                "JSON), so most of the time is system time spent in those calls rather than "
                "in reading the index. Buffering the output (a `BufWriter` around the "
                "stdout lock in `commands/output.rs::json`) should remove nearly all of it."
            )
        findings.append(line)
    if "add" in missed:
        fs = e.get("add_fsync_calls", "")
        line = (
            f"* **{num(adds)} `add`s** took {secs(add_total)}, {ms(add_each)} each, of which "
            f"about {float(e['spawn_ms']):.2f} ms is spawning a process from the shell loop "
            "(measured with `/bin/true`)."
        )
        if e.get("add_slices_ms"):
            sl = [float(x) for x in e["add_slices_ms"].split()]
            line += (
                f" Per tenth of the run, in ms per add: {', '.join(f'{x:.2f}' for x in sl)} "
                f"(fastest {min(sl):.2f}, slowest {max(sl):.2f})"
                + (
                    ": the cost is steady, so the index growing does not slow it down."
                    if max(sl) < 1.5 * min(sl)
                    else ": uneven, so part of the total is bursts of slow flushes (or other "
                    "load on the machine), on top of a steady floor near the fastest tenth."
                )
            )
        if fs:
            fs_ms = e.get("add_fsync_ms")
            line += (
                f" One `add` makes **{fs} fsync/fdatasync calls** "
                + (f"taking {float(fs_ms):.1f} ms under `strace -w -c` " if fs_ms else "")
                + "(the blob "
                "file, its directory, then redb's as the write transaction commits and the "
                "database is closed)."
            )
        if e.get("start_ms"):
            start_ms = float(e["start_ms"])
            line += (
                f" Starting `sregistry` itself from the same loop (`--version`: build the "
                f"whole command-line definition, print, exit; an add builds only its own "
                f"arguments) takes {start_ms:.2f} ms, so the add's own work, flushes "
                f"included, is at least {max(add_each * 1000 - start_ms, 0):.2f} ms."
            )
        if e.get("add_cpu_s"):
            u, y = (float(x) / adds for x in e["add_cpu_s"].split())
            line += (
                f" CPU time per add process: user {ms(u)}, system {ms(y)} (on this VM the "
                "system time includes the synchronous part of each flush)."
            )
        findings.append(line)
    if "big" in missed:
        over = b_add["median"] - b_cps["median"]
        floor = b_cps["median"] / b_cp["median"]
        line = (
            f"* **`add` of {big_label}** takes {ratio:.2f}× plain `cp` "
            f"(user {ms(b_add['user'])}, system {ms(b_add['system'])}, against `cp`'s "
            f"system {ms(b_cp['system'])}). Both copy inside the kernel "
            "(`copy_file_range`); `cp` returns once the data is in the page cache, while "
            "`add` also hashes every chunk of the staged file on a second thread (BLAKE3), "
            "starts its writeback during the copy, and fsyncs it before it becomes visible."
        )
        if e.get("big_fsync_s"):
            line += (
                " Under `strace -w -c`, waiting for the disk (fsync, fdatasync, "
                f"sync_file_range) took {float(e['big_fsync_s']):.2f} s of one such add."
            )
        line += (
            " Round by round, `add`: "
            + ", ".join(f"{t * 1000:.0f}" for t in b_add["times"])
            + " ms; `cp`: "
            + ", ".join(f"{t * 1000:.0f}" for t in b_cp["times"])
            + " ms; `cp` + `sync`: "
            + ", ".join(f"{t * 1000:.0f}" for t in b_cps["times"])
            + " ms."
        )
        line += (
            f" `cp` + `sync`, which waits for the disk after copying, takes "
            f"{secs(b_cps['median'])} ({floor:.2f}× `cp`); `add` is {ratio_sync:.2f}× that"
        )
        if ratio_sync <= 1.0:
            line += (
                ": it overlaps the writeback with the copy, and what is left above plain "
                "`cp` is the disk's time to take the data (and the hash, where the second "
                "core is busy)."
            )
        else:
            line += (
                f", {ms(over)} above it: see the system time and "
                "`bench/work/results/strace-big.txt` for where it went."
            )
        findings.append(line)
    if not findings:
        findings.append("* Every target was met.")
    findings_md = "\n".join(findings)

    fs_options = f"; mounted `{e['fs_options']}`" if e.get("fs_options") else ""
    parts = [("get", "get"), ("list", "list"), ("add", "adds"), ("big", "large add")]
    other_cells, busy_parts = [], []
    for key, label in parts:
        v = e.get("other_" + key)
        if not v:
            continue
        cores, steal, wall = (float(x) for x in v.split())
        other_cells.append(f"{label}: {cores:.2f} cores, steal {steal:.2f} ({wall:.0f} s)")
        if cores > 0.25 or steal > 0.1:
            busy_parts.append(label)
    other_md = "; ".join(other_cells) or "not measured"
    busy_md = ""
    if busy_parts:
        busy_md = (
            "\n**Other work ran on this machine during: " + ", ".join(busy_parts) + "** "
            "(see \"other work\" above: CPU used by other processes and kernel threads, in "
            "cores on average, and time stolen by the VM's host). The figures of those parts "
            "are likely pessimistic; run `make bench` again on a quiet machine to confirm "
            "them.\n"
        )

    header = (
        "# Benchmarks\n\n"
        if not quick
        else "# Benchmarks (BENCH_QUICK smoke test: reduced sizes, not the reference figures)\n\n"
    )
    if quick:
        intro = (
            f"Written by `BENCH_QUICK=1 make bench` on {e['date']}, at reduced sizes: a smoke "
            "test of the harness, not figures to quote. `make bench` writes the real ones to "
            "docs/benchmarks.md."
        )
    else:
        intro = (
            f"Generated by `make bench` (`bench/run.sh`, which writes this file) on {e['date']}.\n"
            "Every figure below comes from that one run on the machine described here; re-run\n"
            "`make bench` to refresh them. (`BENCH_QUICK=1 make bench` is a smoke test at\n"
            "reduced sizes and never writes this file.)"
        )
    doc = f"""{header}{intro}

## Machine

| | |
|---|---|
| CPU | {e['cpu'] or 'unknown'}, {e['nproc']} cores (`nproc`) |
| memory | {e['mem_total']} |
| filesystem of the work dir | {e['fs_type']} (caches, sources and copies all on it){fs_options} |
| kernel | {e['kernel']} |
| sregistry | {e['sregistry_version']} (release build, git {e['git_rev']}), {e['rustc']} |
| anchor | the old Python client: {e['py_client']} |
| tools | {e['hyperfine']}, GNU time, strace |
| load average as each part began | get {e.get('load_get', '?')}; list {e.get('load_list', '?')}; add {e.get('load_add', '?')}; large add {e.get('load_big', '?')} |
| other work during each part | {other_md} |

## Results

{table_md}

{"Targets missed: **" + ", ".join(missed) + "** (see Findings)." if missed else "All targets met."}
{busy_md}
### Details (hyperfine)

{details_md}

## Findings

{findings_md}

## Method

* **Caches.** The {num(names)}-name cache is built by `examples/populate.rs` through the
  library (names `bench/ns{{i%100}}/img{{i}}:v{{i%7}}` over {num(max(1, names // 100))} distinct
  4 KiB blobs, 10,000 names per write transaction; it took {float(e['populate_s']):.1f} s).
  Its last-use times are fresh, so `get` takes its read-only path (the shared lock, one
  lookup, a stat); once every 10 minutes per name a `get` also commits the last-use time.
* **`get`** runs the whole process (`hyperfine -N`, no shell), {e['get_runs']} runs after
  warm-up, on one name in the middle of the index. Peak RSS is the largest
  `/usr/bin/time -f %M` of {e['rss_runs']} runs.
* **Python anchor.** `sregistry==0.2.39` with `spython` and `sqlalchemy<=1.4.48` in
  `bench/.venv`. It takes its home from the password database, not `$HOME`, so the harness
  points `SREGISTRY_DATABASE` (the folder of `sregistry.db`) and `SREGISTRY_STORAGE` at
  scratch folders, plus its secrets, credential and Singularity cache paths; the run
  checked that it wrote {e['py_writes']}. Its `get` is measured on a database of
  {e['py_images']} images it added itself; its `add --copy` on {py_adds} files, and the
  {num(adds)}-add figure for it is that per-add time multiplied, **extrapolated**, not
  measured.
* **`list --json`** writes the full JSON of every name; hyperfine sends stdout to
  /dev/null (the headline) and, as a check, to a pipe.
* **Sequential adds**: a shell loop runs `sregistry -q add FILE --name bench/add/imgN:v1`
  {num(adds)} times into a fresh cache, each a new process with a durable commit; the
  time includes process start-up (about {float(e['spawn_ms']):.2f} ms per process here).
  No large deletion precedes the loop (the 100,000-name cache is removed after it): ext4
  passes over recently freed inodes when it allocates, which would slow the first adds.
* **Large add vs `cp`.** One {big_label} file of random bytes, written and synced first
  (so its pages are cached for every contender alike). Each run of `add` starts from a
  fresh cache directory and each `cp` from no destination (`--prepare` removes it and runs
  `sync`, so no write-back of an earlier run is pending). The contenders take turns:
  {e['big_runs']} rounds of one run of each, after {e.get('big_warmup', 'the')} unreported
  warm-up round(s) and two untimed copies that warm the memory the copies use (on this
  VM a first touch of fresh memory can triple a `cp`), so that the disk's drift over
  minutes falls on all of them alike. The verdict is the ratio of the medians. `add` copies, hashes (BLAKE3) and fsyncs the blob; plain `cp` does not
  wait for the disk, so `cp` + `sync` of the copy is shown too, but the target is against
  plain `cp`.
* The machine has 2 cores and may be shared with other work (builds, tests): "other work"
  above is the CPU that processes and kernel threads outside the benchmark used during
  each part (from `/proc/stat`, less the benchmark's own CPU time; kernel threads that
  write back our data count as other work too), and the time the VM's host stole.
  Figures are from one run, not a best of several.
* Raw results (hyperfine JSON, `strace -c` summaries, the log) stay in
  `bench/work/results/` after a run.
"""
    with open(out_path, "w") as f:
        f.write(doc)
    with open(os.path.join(res, "verdict.env"), "w") as f:
        f.write(f"missed={len(missed)}\n")
    print(table_md)
    print()
    print("Targets missed: " + (", ".join(missed) if missed else "none"))


if __name__ == "__main__":
    main()
