#!/usr/bin/env bash
# The docker:// converter alone (src/convert/, through examples/convert_layout.rs) against
# the pipeline Apptainer runs after its download: `umoci raw unpack` then
# `mksquashfs -comp gzip` (its default level 9, and level 6 as sregistry uses), on an
# image of about 280 MB and 8,400 files built with umoci from this machine's busybox and
# Python, vim and perl runtime files. Prints times, sizes and peak memory.
# BENCH_PROFILE=dev uses a debug build (dependencies optimised; for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$PWD/bench/work/convert
rm -rf "$work"; mkdir -p "$work"
bash scripts/install-deps.sh
profile=${BENCH_PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build -q --release --example convert_layout
  ex=$(bash scripts/release-dir.sh)/examples/convert_layout
else
  cargo build -q --example convert_layout
  ex=$(dirname "$(bash scripts/release-dir.sh)")/debug/examples/convert_layout
fi

cd "$work"
umoci init --layout img >/dev/null
umoci new --image img:t
mkdir -p bb/bin && cp "$(command -v busybox)" bb/bin/
umoci insert --image img:t bb / >/dev/null
for d in /usr/lib/python3.11 /usr/lib/python3 /usr/share/vim /usr/share/perl /usr/lib/gcc; do
  [ -d "$d" ] && umoci insert --image img:t "$d" "$d" >/dev/null
done
echo "image: $(du -sh img | cut -f1) compressed, $(umoci stat --image img:t | grep -c '^sha256') layers"

rootless=""; [ "$(id -u)" -eq 0 ] || rootless="--rootless"
t() { /usr/bin/time -f "%e s, peak RSS %M KB" "$@" 2>&1 >/dev/null | tail -1; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
echo "sregistry write_sif (gzip 6):      $(t "$ex" img t ours.sif)   $(stat -c %s ours.sif) bytes"
echo "umoci raw unpack:                  $(t umoci raw unpack $rootless --image img:t rootfs)   $(find rootfs | wc -l) paths, $(du -sh rootfs | cut -f1)"
echo "mksquashfs -comp gzip (level 9):   $(t mksquashfs rootfs r9.sqfs -comp gzip -noappend -quiet -no-progress)   $(stat -c %s r9.sqfs) bytes"
echo "mksquashfs -comp gzip, level 6:    $(t mksquashfs rootfs r6.sqfs -comp gzip -Xcompression-level 6 -noappend -quiet -no-progress)   $(stat -c %s r6.sqfs) bytes"
