"""The daemon finds a container's init on the host (egress/container_init.py), and an attacker
inside a container cannot make it find another process: not by calling a process of its own the
other container's monitor, not with inits of nested pid namespaces, not by moving its processes
(its init included) between its cgroups. What the host finds is what incusd reports, for the
attacker's container and for its neighbour; a stopped container, or the same names under another
incusd's path, give nothing (the daemon then asks incusd).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from coi_async.egress.container_init import incus_lxcpath, init_on_host, lxc_name
from coi_async.incus import IncusClient
from tests.helpers import DEBIAN_IMAGE, running

pytestmark = pytest.mark.incus

# Run as root in the attacker's container: a process named as its neighbour's monitor whose
# child is pid 1 of a namespace of its own, more such inits, and every process it can reach
# (its init too) moved into a cgroup it made.
ATTACK = r"""
set -e
cg=/sys/fs/cgroup/unified; [ -d "$cg" ] || cg=/sys/fs/cgroup
mkdir -p "$cg/evil"
setsid -f bash -c "exec -a '$1' unshare --pid --fork --mount-proc sleep 600" </dev/null >/dev/null 2>&1
for i in 1 2 3; do setsid -f unshare --pid --fork sleep 600 </dev/null >/dev/null 2>&1; done
sleep 0.5
moved=0
for p in $(ls /proc | grep -E '^[0-9]+$'); do
    echo "$p" >"$cg/evil/cgroup.procs" 2>/dev/null && moved=$((moved + 1)) || true
done
grep -h NSpid /proc/[0-9]*/status | awk 'NF == 3 && $3 == 1' | wc -l
grep -c '/evil$' /proc/1/cgroup
"""


@pytest.fixture
async def pair(incus: IncusClient, unique: str) -> AsyncIterator[tuple[str, str]]:
    names = (f"{unique}-attacker", f"{unique}-neighbour")
    async with running(incus, DEBIAN_IMAGE, *names):
        yield names


async def incusd_init(incus: IncusClient, name: str) -> tuple[int, int]:
    state = await incus.get_instance_state(name)
    assert state.status == "Running"
    assert state.pid > 0
    return state.pid, os.stat(f"/proc/{state.pid}/ns/net").st_ino


@pytest.fixture
async def lxcpath(incus: IncusClient) -> str:
    """Where the test's incusd keeps its containers for LXC, as the daemon finds it."""
    found = incus_lxcpath((await incus.server_info()).environment.server_pid)
    assert found is not None
    return found


async def test_the_host_finds_each_init_whatever_a_container_does(
    incus: IncusClient, incus_project: str, pair: tuple[str, str], lxcpath: str
) -> None:
    attacker, neighbour = pair
    spoof = f"[lxc monitor] {lxcpath} {lxc_name(incus_project, neighbour)}"
    done = await incus.exec(attacker, ["sh", "-c", ATTACK, "attack", spoof])
    assert done.ok, done.stderr
    nested, init_moved = done.stdout.decode().split()[:2]
    assert int(nested) >= 4  # the nested inits run, each at pid 1 of its own namespace
    assert int(init_moved) > 0  # and the container's init is in the attacker's cgroup
    spoofed = [
        p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith(spoof.encode() + b"\0")
    ]
    assert spoofed  # the host sees a process of the attacker's named as the neighbour's monitor

    for name in pair:
        assert init_on_host(lxcpath, incus_project, name) == await incusd_init(incus, name)


async def test_a_stopped_container_or_another_incusd_s_path_gives_nothing(
    incus: IncusClient, incus_project: str, pair: tuple[str, str], lxcpath: str
) -> None:
    attacker, neighbour = pair
    assert init_on_host("/var/lib/other-incus/containers", incus_project, attacker) is None
    assert init_on_host(lxcpath, "default", attacker) is None  # the same name in another project
    await incus.stop_instance(neighbour, force=True)
    assert init_on_host(lxcpath, incus_project, neighbour) is None
    assert incus_lxcpath(os.getpid()) is None  # a process that is not an incusd


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read(4096)
    except OSError:
        return b""
