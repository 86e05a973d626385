#!/usr/bin/env bash
# Recipe of coi-test-debian: fill the empty directory $1 with the root filesystem.
# Run by scripts/build-test-images (as root), which hashes this folder plus the fake CLI and passes:
#   COI_CACHE_DIR   where the debootstrap result is cached (debian-base-<hash of debootstrap.conf>.tar.zst)
#   COI_FAKE_CLAUDE the fake Claude CLI to install as /usr/local/bin/claude and /usr/local/bin/dummy
#   COI_FAKE_TOOL   the fake Codex, Gemini CLI and opencode, installed under each of those names
# Stage 1 (slow, cached): debootstrap as described by debootstrap.conf.
# Stage 2 (a few seconds, every build): user, sudo, masks, fake CLI, cleanup.
set -euo pipefail

root=${1:?usage: build-rootfs.sh ROOTFS}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${COI_CACHE_DIR:?}
fake_claude=${COI_FAKE_CLAUDE:?}
fake_tool=${COI_FAKE_TOOL:?}
log() { printf 'build-test-images: debian: %s\n' "$*" >&2; }

# shellcheck source-path=SCRIPTDIR source=debootstrap.conf
. "$here/debootstrap.conf"
base_key=$(sha256sum <"$here/debootstrap.conf" | cut -c1-16)
base=$cache/debian-base-$base_key.tar.zst
tar_opts=(--numeric-owner --xattrs --xattrs-include='*')

# ---- stage 1: debootstrap, or unpack its cached result --------------------------------------------
if [[ -s $base ]]; then
    log "unpacking cached base $(basename "$base")"
    zstd -q -dc "$base" | tar -x "${tar_opts[@]}" -C "$root"
else
    log "debootstrap $SUITE ($VARIANT) from $MIRROR; output in $root.debootstrap.log"
    mkdir -p "$cache/debs"
    # debootstrap mounts /proc and /sys inside $root while it runs; the caller unmounts leftovers.
    if ! debootstrap --variant="$VARIANT" --include="${PACKAGES// /,}" --components=main \
        --cache-dir="$cache/debs" "$SUITE" "$root" "$MIRROR" >"$root.debootstrap.log" 2>&1; then
        tail -n 30 "$root.debootstrap.log" >&2
        log "debootstrap failed (full log above was $root.debootstrap.log)"
        exit 1
    fi
    # Drop what debootstrap copies from the host and its own leftovers before caching.
    rm -rf "$root/debootstrap" "$root"/var/cache/apt/archives/*.deb
    log "caching base as $(basename "$base")"
    tar -c "${tar_opts[@]}" -C "$root" . | zstd -q -T0 -3 -o "$base.partial"
    mv -f "$base.partial" "$base"
    # Keep only this base; older ones belong to earlier debootstrap.conf versions.
    find "$cache" -maxdepth 1 -name 'debian-base-*.tar.zst' ! -name "$(basename "$base")" -delete
fi

# ---- stage 2: customise -------------------------------------------------------------------------
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }

# User code (1000:1000, bash, passwordless sudo), as the coi image has it.
in_root groupadd --gid 1000 code
in_root useradd --uid 1000 --gid 1000 --groups sudo --create-home --home-dir /home/code \
    --shell /bin/bash --comment code code
printf 'code ALL=(ALL) NOPASSWD:ALL\n' >"$root/etc/sudoers.d/code"
chmod 0440 "$root/etc/sudoers.d/code"
install -d -m 0755 -o 1000 -g 1000 "$root/workspace"
# A second user (dev, 1001:1001, same rights), for sessions with a non-default incus.code_user/code_uid.
in_root groupadd --gid 1001 dev
in_root useradd --uid 1001 --gid 1001 --groups sudo --create-home --home-dir /home/dev \
    --shell /bin/bash --comment dev dev
printf 'dev ALL=(ALL) NOPASSWD:ALL\n' >"$root/etc/sudoers.d/dev"
chmod 0440 "$root/etc/sudoers.d/dev"

# The fake AI CLI, under both names coi uses.
install -m 0755 "$fake_claude" "$root/usr/local/bin/claude"
install -m 0755 "$fake_claude" "$root/usr/local/bin/dummy"
# The other tools' fakes: one program, which picks its behaviour by the name it runs under.
for tool in codex gemini opencode; do
    install -m 0755 "$fake_tool" "$root/usr/local/bin/$tool"
done
# Like the coi image: `poweroff` & co. work for code too.
for cmd in shutdown poweroff reboot halt; do
    printf '#!/bin/sh\nexec sudo /usr/sbin/%s "$@"\n' "$cmd" >"$root/usr/local/bin/$cmd"
    chmod 0755 "$root/usr/local/bin/$cmd"
done

# Units that wait for or need a network, or poll apt, in a container that has none.
for unit in systemd-networkd-wait-online.service systemd-networkd.service systemd-networkd.socket \
    systemd-resolved.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
    apt-daily.service apt-daily-upgrade.service e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer; do
    ln -sfn /dev/null "$root/etc/systemd/system/$unit"
done

# Per-instance identity: Incus renders /etc/hostname and /etc/hosts from templates/ at create time;
# an empty machine-id makes systemd generate one on first boot.
rm -f "$root/etc/hostname" "$root/var/lib/dbus/machine-id"
: >"$root/etc/machine-id"
printf '127.0.0.1\tlocalhost\n' >"$root/etc/hosts"
: >"$root/etc/resolv.conf"                # debootstrap copied the host's
printf 'LANG=C.UTF-8\n' >"$root/etc/default/locale"

# Lean: no docs, man pages, locales or apt caches, now or after a later apt-get install.
cat >"$root/etc/dpkg/dpkg.cfg.d/01-coi-nodoc" <<'CFG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -f "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
find "$root/var/cache/apt/archives" "$root/var/lib/apt/lists" -type f -delete
find "$root/var/log" -type f -delete
find "$root/tmp" "$root/var/tmp" -mindepth 1 -delete
