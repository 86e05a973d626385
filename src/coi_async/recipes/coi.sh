#!/bin/bash
# The core step of the `coi` image, run as root in the build container by `coi build`; each AI
# tool is a step of its own after it (tool.sh).
# Egress: when the container has no network interface, coi sets http_proxy/https_proxy and apt's
# proxy to its allowlisting host proxy; everything here comes from deb.debian.org.
# /tmp/dummy is the fake AI CLI shipped with coi (installed as /usr/local/bin/dummy for tests).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
step() { printf '\n==> %s\n' "$*"; }

# Packages must not start services in the half-built image (dockerd least of all).
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT

step "Debian packages"
apt-get update
apt-get install -y --no-install-recommends \
    bash tmux git python3 build-essential ca-certificates curl jq sudo less procps \
    openssh-client unzip xz-utils nodejs npm docker.io gh

step "user code (1000:1000, passwordless sudo, docker group)"
if ! getent group 1000 >/dev/null; then
    groupadd --gid 1000 code
elif [[ $(getent group 1000 | cut -d: -f1) != code ]]; then
    groupmod --new-name code "$(getent group 1000 | cut -d: -f1)"
fi
if ! getent passwd 1000 >/dev/null; then
    useradd --uid 1000 --gid 1000 --create-home --home-dir /home/code --shell /bin/bash --comment code code
elif [[ $(getent passwd 1000 | cut -d: -f1) != code ]]; then
    usermod --login code --home /home/code --move-home "$(getent passwd 1000 | cut -d: -f1)"
fi
usermod --shell /bin/bash --append --groups sudo,docker code
printf 'code ALL=(ALL) NOPASSWD:ALL\n' >/etc/sudoers.d/code
chmod 0440 /etc/sudoers.d/code
install -d -m 0755 -o 1000 -g 1000 /workspace

step "power commands without typing sudo"
for cmd in poweroff shutdown reboot halt; do
    printf '#!/bin/sh\nexec sudo /usr/sbin/%s "$@"\n' "$cmd" >"/usr/local/bin/$cmd"
    chmod 0755 "/usr/local/bin/$cmd"
done

step "test stub /usr/local/bin/dummy"
install -m 0755 /tmp/dummy /usr/local/bin/dummy

step "versions"
printf 'node %s, npm %s, %s, %s\n' "$(node --version)" "$(npm --version)" \
    "$(docker --version)" "$(gh --version | head -n1)"

step "cleanup"
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.npm /root/.cache /var/cache/debconf/*-old /var/lib/dpkg/*-old
find /var/log -type f -delete
