#!/bin/sh
# /init of the cluster guests (tests/cluster/README.md). The kernel command line says which
# node this is: `sr.role=server sr.clients=3` or `sr.role=client sr.id=N`, and
# `sr.grace=skip` on a fresh server. Then a command agent serves the host on /dev/ttyS1.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm && mount -t tmpfs -o size=64m tmpfs /dev/shm
mount -t tmpfs -o size=96m tmpfs /tmp
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^sr\.$1=//p" | tail -n1; }
role=$(arg role)
id=$(arg id)
say() { echo "sr-init: $*" >/dev/ttyS0; }
fail() { say "FAILED: $*"; echo "@@BOOTFAIL $*" >/dev/ttyS1; sleep 3600; }

kver=$(uname -r)
depmod "$kver" 2>/dev/null
while read -r m; do modprobe "$m" || insmod "$(find /lib/modules -name "$m.ko" | head -n1)"; done </etc/modules.order
ip link set lo up

# The host's files (sregistry binaries, test data) come in read-only over 9p, and are
# copied to memory: every exec of a binary on 9p would page it in from the host again.
mkdir -p /mnt/host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /mnt/host || fail "no 9p share"
cp -a /mnt/host/. /host/ || fail "copying the host files"
if [ "$role" = server ]; then
    hostname server
    n=$(arg clients)
    i=1
    while [ "$i" -le "$n" ]; do
        ip addr add "10.0.$i.1/24" dev "eth$((i - 1))" && ip link set "eth$((i - 1))" up
        i=$((i + 1))
    done
    # One address every client reaches the same way (for remotes with a single URL).
    ip addr add 10.0.0.1/32 dev lo
    mount -t ext4 /dev/vda /export || fail "no export disk"
    mkdir -p /export/cache /export/www /export/.v4recovery
    chmod 1777 /export/cache
    mount -t nfsd nfsd /proc/fs/nfsd || fail "no nfsd"
    echo "$(arg lease)" >/proc/fs/nfsd/nfsv4leasetime
    echo "$(arg lease)" >/proc/fs/nfsd/nfsv4gracetime
    # Clients reclaim their state after a reboot only if the server remembers them: keep
    # the records on the export disk.
    echo /export/.v4recovery >/proc/fs/nfsd/nfsv4recoverydir
    echo "-2 -3 +4 +4.1 +4.2" >/proc/fs/nfsd/versions
    never=2147483647
    i=1
    while [ "$i" -le "$n" ]; do
        echo "nfsd 10.0.$i.2 $never cluster" >/proc/net/rpc/auth.unix.ip/channel
        i=$((i + 1))
    done
    # flags 9218: insecure ports, no subtree check, fsid given (0: the NFSv4 root); rw, no root squash
    echo "cluster /export $never 9218 65534 65534 0" >/proc/net/rpc/nfsd.export/channel
    printf 'cluster 1 \\x00000000 %s /export\n' "$never" >/proc/net/rpc/nfsd.fh/channel
    echo "tcp 2049" >/proc/fs/nfsd/portlist
    echo 16 >/proc/fs/nfsd/threads
    [ "$(arg grace)" = skip ] && echo Y >/proc/fs/nfsd/v4_end_grace
    # The HTTP remote: busybox httpd, logging each request (tests count downloads).
    setsid httpd -f -vv -p 8080 -h /export/www >>/export/httpd.log 2>&1 &
    say "nfs server up"
else
    hostname "node$id"
    ip addr add "10.0.$id.2/24" dev eth0 && ip link set eth0 up
    ip route add 10.0.0.1/32 via "10.0.$id.1"
    mkdir -p /mnt/nfs /local
    # The node's own disk (figures compare an add there with one on NFS).
    [ -b /dev/vda ] && mount -t ext4 /dev/vda /local
    tries=0
    until mount -t nfs4 -o "vers=4.2,addr=10.0.$id.1,clientaddr=10.0.$id.2$(arg mountopts)" "10.0.$id.1:/" /mnt/nfs 2>/dev/ttyS0; do
        tries=$((tries + 1))
        [ "$tries" -lt 100 ] || fail "nfs mount"
        sleep 0.2
    done
    say "nfs mounted"
fi
export SREGISTRY_CACHE=/mnt/nfs/cache HOME=/root PATH=/host/bin:$PATH
mkdir -p /root

# The agent: each request is one line `ID BASE64-SCRIPT`; the answer is the script's
# stdout and stderr in base64 between markers, then `@@END ID EXIT-CODE`.
stty -F /dev/ttyS1 raw -echo
exec </dev/ttyS1 >/dev/ttyS1 2>/dev/ttyS0
echo "@@READY $(hostname)"
while read -r rid b64; do
    [ -n "$rid" ] || continue
    echo "$b64" | base64 -d >/tmp/.cmd
    sh /tmp/.cmd </dev/null >/tmp/.out 2>/tmp/.err
    rc=$?
    echo "@@OUT $rid"
    base64 /tmp/.out
    echo "@@ERR $rid"
    base64 /tmp/.err
    echo "@@END $rid $rc"
done
