#!/bin/sh
# Runs inside the freshly debootstrapped root (chroot) as root; SUITE and MIRROR come from base.toml.
set -eu

# Updates and security fixes come from the same host, so one allowlist entry serves all three.
cat >/etc/apt/sources.list <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SOURCES

# A container without a network must not wait for one at boot, nor poll apt.
for unit in systemd-networkd-wait-online.service systemd-networkd.service systemd-networkd.socket \
    systemd-resolved.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
    apt-daily.service apt-daily-upgrade.service e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
    ln -sfn /dev/null "/etc/systemd/system/$unit"
done

# Per-instance identity comes from Incus templates (hostname, hosts) and systemd (machine-id).
rm -f /etc/hostname /var/lib/dbus/machine-id
: >/etc/machine-id
printf '127.0.0.1\tlocalhost\n' >/etc/hosts
: >/etc/resolv.conf
printf 'LANG=C.UTF-8\n' >/etc/default/locale

# Lean images: no docs, man pages or locales, now or after later installs.
cat >/etc/dpkg/dpkg.cfg.d/01-coi-nodoc <<'CFG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/lintian/*
find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/lib/dpkg/*-old /var/cache/debconf/*-old
find /var/log -type f -delete
