#!/usr/bin/env bash
# Benchmarks for pull and push against a local docker-registry (issue: pull and push).
# Pull of a SIZE MiB SIF vs curl of the same blob from the same registry; push vs PyPI
# oras pushing it. Writes docs/benchmarks-remote.md. BENCH_QUICK=1 shrinks it (no doc).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${BENCH_QUICK:-0}
work=$PWD/bench/work/remote
rm -rf "$work"; mkdir -p "$work"
bash scripts/install-deps.sh
command -v hyperfine >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null; }
command -v curl >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
cargo build -q --release --bin sregistry
bin=$(bash scripts/release-dir.sh)/sregistry
if [ "$quick" = 1 ]; then size=64; runs=3; else size=1024; runs=7; fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start_registry() {  # a fresh, empty registry on $port
  [ -n "${regpid:-}" ] && kill $regpid 2>/dev/null && wait $regpid 2>/dev/null || true
  rm -rf $work/data
  cat > $work/config.yml <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/data
http:
  addr: 127.0.0.1:$port
YML
  docker-registry serve $work/config.yml > $work/registry.log 2>&1 &
  regpid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$port/v2/ >/dev/null && return; sleep 0.1; done
  echo "registry did not start" >&2; exit 1
}
trap '[ -n "${regpid:-}" ] && kill $regpid 2>/dev/null || true' EXIT

head -c ${size}M /dev/urandom > $work/image.sif
cache=$work/cache
$bin --cache $cache add $work/image.sif --name bench/image:1 >/dev/null

cpuof() {  # cpuof FILE CMD...: like timeit, and appends the command's user+sys seconds to FILE
  local t0 t1; t0=$(date +%s.%N)
  /usr/bin/time -a -o "$1" -f "%U %S" "${@:2}" >/dev/null 2>>$work/errors.log
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
regcpu() {  # CPU seconds the registry has used so far
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' /proc/$regpid/stat
}
timeit() {  # seconds taken by a command
  local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>>$work/errors.log; t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}

# Push: ours vs PyPI oras, each into an empty registry, so every byte is sent.
cat > $work/oras_push.py <<PY
import oras.client
c = oras.client.OrasClient(insecure=True)
c.push(target="127.0.0.1:$port/bench/oras:1",
       files=["$work/image.sif:application/vnd.sylabs.sif.layer.v1.sif"],
       disable_path_validation=True)
PY
: > $work/push_ours; : > $work/push_oras
for r in $(seq 1 $runs); do
  start_registry; timeit $bin --cache $cache -q push bench/image:1 oras://127.0.0.1:$port/bench/image:1 >> $work/push_ours
  start_registry; timeit python3 $work/oras_push.py >> $work/push_oras
done

# Pull: ours (fresh cache each run, verification included) vs curl of the same blob.
start_registry
$bin --cache $cache -q push bench/image:1 oras://127.0.0.1:$port/bench/image:1
digest=$(python3 -c "import hashlib,sys; h=hashlib.sha256(); f=open('$work/image.sif','rb')
while True:
    b=f.read(1<<20)
    if not b: break
    h.update(b)
print('sha256:'+h.hexdigest())")
# Every run starts from the same state: earlier runs' output removed and flushed (so no
# writeback of 1 GiB competes with the run), the page cache emptied where we may (root),
# and the registry's copy of the blob read back into it, as a registry serving a popular
# image would have it.
blob=$(find $work/data -path "*/blobs/sha256/*/${digest#sha256:}/data")
drop_caches=no; [ -w /proc/sys/vm/drop_caches ] && drop_caches=yes
prep() {
  rm -rf $work/pulled $work/curl.out; sync
  [ $drop_caches = yes ] && echo 1 > /proc/sys/vm/drop_caches
  cat "$blob" > /dev/null
}
: > $work/pull_ours; : > $work/pull_curl; : > $work/pull_curl_check
: > $work/cpu_ours; : > $work/cpu_curl; : > $work/regcpu_ours; : > $work/regcpu_curl
for r in $(seq 1 $runs); do
  prep; r0=$(regcpu); cpuof $work/cpu_ours $bin --cache $work/pulled -q pull oras://127.0.0.1:$port/bench/image:1 >> $work/pull_ours
  echo "$r0 $(regcpu)" >> $work/regcpu_ours
  cmp $(find $work/pulled/v1/blobs -type f) $work/image.sif
  prep; r0=$(regcpu); cpuof $work/cpu_curl curl -sf -o $work/curl.out http://127.0.0.1:$port/v2/bench/image/blobs/$digest >> $work/pull_curl
  echo "$r0 $(regcpu)" >> $work/regcpu_curl
  cmp $work/curl.out $work/image.sif
  prep; timeit sh -c "curl -sf -o $work/curl.out http://127.0.0.1:$port/v2/bench/image/blobs/$digest && sha256sum $work/curl.out" >> $work/pull_curl_check
done
echo "$drop_caches" > $work/drop_caches

python3 - "$work" "$quick" "$size" "$runs" <<'PY'
import sys, statistics, datetime, os
work, quick, size, runs = sys.argv[1:]
med = lambda f: statistics.median(float(x) for x in open(f"{work}/{f}").read().split())
po, pr, lo, lc, lcc = med("push_ours"), med("push_oras"), med("pull_ours"), med("pull_curl"), med("pull_curl_check")
dropped = open(f"{work}/drop_caches").read().strip() == "yes"
def cpu(f):  # median user+sys seconds per run
    return statistics.median(float(u) + float(t) for u, t in (l.split() for l in open(f"{work}/{f}") if l.strip()))
def reg(f):  # median CPU seconds the registry spent per run
    return statistics.median(float(b) - float(a) for a, b in (l.split() for l in open(f"{work}/{f}") if l.strip()))
co, cc, ro, rc = cpu("cpu_ours"), cpu("cpu_curl"), reg("regcpu_ours"), reg("regcpu_curl")
ncpu = os.cpu_count()
runs_of = lambda f: ", ".join(f"{float(x):.2f}" for x in open(f"{work}/{f}").read().split())
mib = int(size)
rows = [
  (f"pull of a {mib} MiB SIF from a local docker-registry, fresh cache, verification included (median of {runs})",
   f"{lo:.2f} s = {mib/lo:.0f} MiB/s", f"curl of the same blob to a file: {lc:.2f} s = {mib/lc:.0f} MiB/s",
   "≥ 0.9× curl's throughput", f"{lc/lo:.3f}× → " + ("**pass**" if lc/lo >= 0.9 else "**MISSED**")),
  (f"push of the same SIF into an empty registry (median of {runs})",
   f"{po:.2f} s = {mib/po:.0f} MiB/s", f"PyPI oras push: {pr:.2f} s = {mib/pr:.0f} MiB/s",
   "at least as fast as oras", f"{pr/po:.3f}× → " + ("**pass**" if po <= pr else "**MISSED**")),
]
md = ["# Benchmarks: pull and push", "",
      "Generated by `make bench` (`bench/remote.sh`) on %s on this machine (%s cores), against Debian's docker-registry on 127.0.0.1 (plain HTTP, filesystem storage). Re-run to refresh." % (datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), os.cpu_count()), "",
      "| measure | sregistry | anchor | target | result |", "|---|---|---|---|---|"]
md += ["| " + " | ".join(r) + " |" for r in rows]
md += ["", f"Every run, in seconds: sregistry {runs_of('pull_ours')}; curl {runs_of('pull_curl')}; curl then `sha256sum` {runs_of('pull_curl_check')} (median {lcc:.2f} s = {mib/lcc:.0f} MiB/s: what a script needs for the same check, which sregistry does while it downloads). Push, sregistry {runs_of('push_ours')}; oras {runs_of('push_oras')}."]
floor = (co + ro) / ncpu
cpu_line = (f"CPU time per pull (medians, user + system): sregistry {co:.2f} s and the registry serving it {ro:.2f} s; curl {cc:.2f} s and the registry {rc:.2f} s. "
            "sregistry hashes every byte twice as it arrives (sha256 to check the registry's digest, BLAKE3 to name the content) and fsyncs the result; curl does neither. "
            f"With {ncpu} cores shared by client and registry, a pull cannot take less than ({co:.2f} + {ro:.2f}) / {ncpu} = {floor:.2f} s")
if floor > lc / 0.9:
    cpu_line += f", so against curl's {lc:.2f} s the best ratio this machine allows is {lc / floor:.2f}×: the target needs more cores (or less CPU per byte), not a faster transfer."
else:
    cpu_line += f", which would allow {lc / floor:.2f}× of curl's {lc:.2f} s: CPU is not what limits it here."
md += ["", cpu_line]
md += ["", "Before each pull run: the previous output removed, `sync`, " + ("the page cache dropped (`echo 1 > /proc/sys/vm/drop_caches`), " if dropped else "(not root: the page cache was not dropped) ") + "and the registry's copy of the blob read into the page cache; runs alternate sregistry, curl, curl + sha256sum."]
md += ["", "Each run of `sregistry pull` starts with an empty cache and ends with the blob verified (sha256 and size against the manifest, BLAKE3 computed), fsynced and committed; curl only writes the bytes. Each push goes to a freshly started, empty registry, so every byte is sent (sregistry also hashes the file with sha256 first, as the manifest needs the digest).", ""]
out = "\n".join(md)
print(out)
if quick != "1":
    open("docs/benchmarks-remote.md", "w").write(out)
PY
rm -rf "$work"/cache "$work"/pulled "$work"/data "$work"/image.sif "$work"/curl.out
