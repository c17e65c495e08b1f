#!/usr/bin/env bash
# Prepare what the cluster tests boot (tests/cluster/README.md): qemu, busybox and cpio from
# Debian, Debian's kernel fetched with `apt-get download` (never installed), its modules
# for virtio, 9p, NFS client and server and ext4, and an initramfs with busybox and the
# guest's init (tests/cluster/init.sh). Everything lands in target/cluster/ (or
# $CLUSTER_DIR); a second run finds it there and only rebuilds the initramfs when init.sh
# changed. Prints the directory on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${CLUSTER_DIR:-$PWD/target/cluster}
mkdir -p "$out"
log() { echo "prepare: $*" >&2; }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
{ [ -x /bin/busybox ] && /bin/busybox --list | grep -x httpd >/dev/null; } || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need[@]}" >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends "${need[@]}" >&2; }
fi

# The kernel: the version the linux-image-amd64 meta package names today.
if [ ! -f "$out/kernel/vmlinux" ]; then
    pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: //p' | head -n1)
    [ -n "$pkg" ] || { log "apt-cache names no kernel for linux-image-amd64 (run apt-get update)"; exit 1; }
    log "fetching $pkg"
    rm -rf "$out/dl" "$out/kernel.new"
    mkdir -p "$out/dl" "$out/kernel.new"
    (cd "$out/dl" && apt-get download "$pkg" >&2)
    dpkg-deb -x "$out"/dl/"$pkg"_*.deb "$out/dl/x"
    vmlinuz=$(ls "$out"/dl/x/boot/vmlinuz-*)
    # vmlinuz is a bzImage with an xz stream inside; qemu boots the uncompressed ELF through
    # its PVH entry, about 3 s faster than the decompressor under emulation.
    off=$(LC_ALL=C grep -obUaP '\xFD7zXZ\x00' "$vmlinuz" | head -n1 | cut -d: -f1)
    tail -c +"$((off + 1))" "$vmlinuz" | xz -dc 2>/dev/null >"$out/kernel.new/vmlinux" || true
    [ "$(head -c 4 "$out/kernel.new/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] ||
        { log "no ELF kernel found inside $vmlinuz"; exit 1; }
    kver=$(basename "$(ls -d "$out"/dl/x/lib/modules/*)")
    echo "$kver" >"$out/kernel.new/version"
    echo "$pkg" >"$out/kernel.new/package"
    # The modules and everything they depend on (read from each module's .modinfo: the
    # .deb has no modules.dep and the host has no kmod).
    moddir=$out/dl/x/lib/modules/$kver
    declare -A seen=()
    add_mod() {
        local name=$1 file dep
        [ -n "${seen[$name]:-}" ] && return
        seen[$name]=1
        file=$(find "$moddir" -name "$name.ko" -o -name "${name//_/-}.ko" | head -n1)
        [ -n "$file" ] || { log "module $name not found in $pkg"; exit 1; }
        for dep in $(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '); do
            add_mod "$dep"
        done
        mkdir -p "$out/kernel.new/modules/$(dirname "${file#"$moddir"/}")"
        cp "$file" "$out/kernel.new/modules/${file#"$moddir"/}"
        echo "$name" >>"$out/kernel.new/modules.order"
    }
    for m in virtio_pci virtio_net virtio_blk 9p 9pnet_virtio nfsv4 nfsd ext4 crc32c_generic; do
        add_mod "$m"
    done
    rm -rf "$out/kernel" "$out/dl/x"
    mv "$out/kernel.new" "$out/kernel"
    log "kernel $kver: $(wc -l <"$out/kernel/modules.order") modules"
fi

# The initramfs: busybox, the modules, the CA bundle, and init.sh as /init. Rebuilt when init.sh changes.
stamp=$(sha256sum tests/cluster/init.sh "$out/kernel/modules.order" /bin/busybox /etc/ssl/certs/ca-certificates.crt | sha256sum | cut -c1-16)
if [ "$(cat "$out/initramfs.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "building the initramfs"
    root=$out/initramfs.d
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,mnt,host,export,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    for a in $(/bin/busybox --list); do
        [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"
    done
    kver=$(cat "$out/kernel/version")
    mkdir -p "$root/lib/modules/$kver"
    cp -r "$out/kernel/modules/." "$root/lib/modules/$kver/"
    cp "$out/kernel/modules.order" "$root/etc/modules.order"
    install -m 0755 tests/cluster/init.sh "$root/init"
    # A node has the usual CA bundle (sregistry's HTTP client will not start without one).
    mkdir -p "$root/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initramfs.gz.new"
    mv "$out/initramfs.gz.new" "$out/initramfs.gz"
    rm -rf "$root"
    echo "$stamp" >"$out/initramfs.stamp"
fi
echo "$out"
