#!/usr/bin/env bash
# Regenerates the SIF seeds in fuzz/corpus/sif/ with Debian's siftool and mksquashfs
# (plus two hand-packed minimal images), each cut to its first 64 KiB.
# Usage: fuzz/seeds/make_sif_seeds.sh   (needs: siftool squashfs-tools python3)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/corpus/sif"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
cd "$work"

mkdir root && echo hello > root/hello
mksquashfs root fs.sqfs -noappend -quiet -no-progress >/dev/null
printf 'Bootstrap: docker\nFrom: alpine:3.20\n\n%%post\n    echo hi\n' > def
printf '{"org.label-schema.name":"demo","maintainer":"ops@example.org"}' > labels.json
printf 'export PATH=/opt/bin:$PATH\nexport LC_ALL=C\n' > env.sh
printf '{"k":[1,2,{"x":null}]}' > generic.json
printf 'raw\x00bytes\xff' > raw.bin
printf '{"bomFormat":"CycloneDX","specVersion":"1.4"}' > sbom.json
printf -- '-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{}\n-----END PGP SIGNATURE-----\n' > msg.asc
head -c 128 /dev/zero | tr '\0' 'S' > sig.bin

siftool new empty.sif
cp empty.sif def.sif && siftool add def.sif def --datatype 1
cp empty.sif texts.sif
siftool add texts.sif labels.json --datatype 3
siftool add texts.sif env.sh --datatype 2
siftool add texts.sif generic.json --datatype 6 --filename generic.json
siftool add texts.sif raw.bin --datatype 7
cp empty.sif image.sif
siftool add image.sif fs.sqfs --datatype 4 --parttype 2 --partfs 1 --partarch 2 --groupid 1
siftool add image.sif def --datatype 1 --groupid 1
siftool add image.sif labels.json --datatype 3 --groupid 1
cp image.sif signed.sif
siftool add signed.sif sig.bin --datatype 5 --signhash 1 \
  --signentity 433FE984155206BD962725E20E8713472A879943 --link 1 --groupid 2
cp empty.sif misc.sif
siftool add misc.sif msg.asc --datatype 8 --groupid 1 --link 1 2>/dev/null \
  || siftool add misc.sif msg.asc --datatype 7
siftool add misc.sif sbom.json --datatype 9 --sbomformat cyclonedx-json
siftool add misc.sif fs.sqfs --datatype 4 --parttype 3 --partfs 4 --partarch 4 --alignment 0

# Minimal images: header + a 2-entry table + data (what siftool cannot make: a small table).
python3 - <<'PY'
import struct
def header(total, table_off, data_off, data_len, arch=b"02"):
    h = bytearray(128)
    h[0:24] = b"#!/usr/bin/env run-sif\n\0"
    h[32:42] = b"SIF_MAGIC\0"
    h[42:45] = b"01\0"
    h[45:48] = arch + b"\0"
    h[48:64] = bytes(range(16))
    struct.pack_into("<8q", h, 64, 1700000000, 1700000001, 0, total,
                     table_off, total * 585, data_off, data_len)
    return h
def desc(dtype, ident, group, link, off, size, name, extra=b""):
    d = bytearray(585)
    struct.pack_into("<iBIII5q", d, 0, dtype, 1, ident, group, link, off, size, size,
                     1700000000, -62135596800)
    d[73:73 + len(name)] = name
    d[201:201 + len(extra)] = extra
    return d
data = b'{"a":"b"}' + b"Bootstrap: library\n"
off = 128 + 2 * 585
img = header(2, 128, off, len(data))
img += desc(0x4003, 1, 0xf0000001, 0, off, 9, b"labels.json")
img += desc(0x4001, 2, 0xf0000001, 0xf0000001, off + 9, 19, b"def")
open("min-text.sif", "wb").write(img + data)
digest = b"sha256:" + b"ab" * 32
img = header(2, 128, off, 4, b"04")
img += desc(0x400b, 1, 0, 0, off, 4, b"blob", digest)
img += desc(0x4004, 2, 0, 0, off, 4, b"part", struct.pack("<ii", 1, 2) + b"04\0")
open("min-oci.sif", "wb").write(img + b"\0\0\0\0")
PY

for f in empty def texts image signed misc min-text min-oci; do
  head -c 65536 "$f.sif" > "$out/$f.sif"
done
ls -l "$out"
