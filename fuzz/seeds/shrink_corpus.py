#!/usr/bin/env python3
"""Cut fuzz/corpus/TARGET down to at most LIMIT files (default 40), keeping coverage.

Run `cargo +nightly fuzz cmin TARGET` first (and build the target: `cargo +nightly fuzz
build TARGET`). This then measures the edges each file covers on its own (one libFuzzer
merge per file, `-use_counters=0`), keeps every hand-made seed (any file whose name is not
a 40-hex SHA-1, as libFuzzer names what it finds), and adds the files that cover the most
edges not yet covered, greedily, until LIMIT or nothing new. The rest are deleted.

Usage: python3 fuzz/seeds/shrink_corpus.py TARGET [LIMIT]
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

FUZZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def edges(binary, path, tmp):
    one, empty, control = (os.path.join(tmp, n) for n in ("one", "empty", "control"))
    for d in (one, empty):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    shutil.copy(path, one)
    if os.path.exists(control):
        os.remove(control)
    subprocess.run(
        [binary, "-merge=1", "-use_counters=0", "-rss_limit_mb=512",
         f"-merge_control_file={control}", empty, one],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    found = set()
    if os.path.exists(control):  # libFuzzer skips empty inputs
        for line in open(control):
            if line.startswith("COV "):
                found.update(line.split()[2:])
    return found


def main():
    target = sys.argv[1]
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    binary = os.path.join(FUZZ, "target", "x86_64-unknown-linux-gnu", "release", target)
    corpus = os.path.join(FUZZ, "corpus", target)
    tmp = tempfile.mkdtemp()
    try:
        cov = {n: edges(binary, os.path.join(corpus, n), tmp) for n in sorted(os.listdir(corpus))}
    finally:
        shutil.rmtree(tmp)
    total = set().union(*cov.values())
    chosen = [n for n in cov if not re.fullmatch(r"[0-9a-f]{40}", n)]
    seeds = len(chosen)
    have = set().union(*(cov[n] for n in chosen))
    rest = [n for n in cov if n not in chosen]
    while len(chosen) < limit and rest:
        best = max(rest, key=lambda n: (len(cov[n] - have),
                                        -os.path.getsize(os.path.join(corpus, n))))
        if not cov[best] - have:
            break
        chosen.append(best)
        have |= cov[best]
        rest.remove(best)
    for n in rest:
        os.remove(os.path.join(corpus, n))
    print(f"{target}: {len(cov)} files covered {len(total)} edges; kept {len(chosen)} "
          f"({seeds} seeds) covering {len(have)} "
          f"({100 * len(have) / max(1, len(total)):.1f}%)")


if __name__ == "__main__":
    main()
