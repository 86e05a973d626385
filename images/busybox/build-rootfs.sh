#!/usr/bin/env bash
# Recipe of coi-test-busybox: fill the empty directory $1 with the root filesystem.
# Run by scripts/build-test-images (as root), which hashes this folder plus $COI_BUSYBOX.
set -euo pipefail

root=${1:?usage: build-rootfs.sh ROOTFS}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
busybox=${COI_BUSYBOX:-/bin/busybox}

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,run,tmp,var/tmp,root,home/code,workspace}
install -m 0755 "$busybox" "$root/bin/busybox"
# No /proc in the chroot, so busybox links to its absolute argv[0]: /bin/busybox.
chroot "$root" /bin/busybox --install -s
rm -f "$root/sbin/init"                     # busybox's own init applet; ours replaces it
install -m 0755 "$here/init" "$root/sbin/init"

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
code:x:1000:1000:code:/home/code:/bin/sh
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
code:x:1000:
GROUP
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"
chown 1000:1000 "$root/home/code" "$root/workspace"
