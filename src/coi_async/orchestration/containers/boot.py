"""Whether a container has booted far enough for coi's work over exec.

Execs that race the init system's start can be lost, and under systemd systemd-tmpfiles-setup
empties /tmp at boot: a tar's scratch space, a build's pushed files, tmux's socket.
"""

from __future__ import annotations

import anyio

from coi_async.errors import CoiError
from coi_async.incus import IncusClient

# One exec that polls inside the container (each exec costs a round trip, and execs are slow
# while the container boots). Ready: the image's init is not systemd, or systemd-tmpfiles-setup
# has run (or the image has no such unit), or boot is over. Whether init is systemd is read from
# the image, not from PID 1: early in the boot PID 1 may not be systemd yet.
_READY_PROBE = """
case "$(readlink -f /sbin/init 2>/dev/null)" in */systemd) ;; *) exit 0 ;; esac
unit=systemd-tmpfiles-setup.service known=
i=0
while [ "$i" -lt 1500 ]; do
    systemctl is-active --quiet "$unit" 2>/dev/null && exit 0
    state=$(systemctl is-system-running 2>/dev/null)
    case "$state" in
        running|degraded) exit 0 ;;
        initializing|starting)
            if [ -z "$known" ]; then
                [ "$(systemctl show -p LoadState --value "$unit" 2>/dev/null)" = not-found ] && exit 0
                known=1
            fi ;;
    esac
    sleep 0.02
    i=$((i + 1))
done
exit 1
"""


async def booted(incus: IncusClient, name: str, *, within_s: float) -> bool:
    """Wait until the container is ready for that (True), at most `within_s` seconds (False)."""
    with anyio.move_on_after(within_s):
        while True:
            try:
                if (await incus.exec(name, ["sh", "-c", _READY_PROBE])).ok:
                    return True
            except CoiError:
                pass  # the exec itself failed (too early in the boot): try again shortly
            await anyio.sleep(0.05)
    return False
