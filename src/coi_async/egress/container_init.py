"""A local Incus container's init and its network namespace, read on the host.

Asking incusd (`GET .../state`) makes it gather the whole state of the container (disks, memory,
network) for the one pid the daemon needs; while containers boot that takes 50-170 ms, and every
session start waits for it. The host already knows:

- LXC runs each container under a monitor process of incusd's, alone in the cgroup
  `lxc.monitor.<name>` at the top of the cgroup2 hierarchy, where `<name>` is Incus's
  `<project>_<instance>` (just the instance in the default project). Only the host's root can
  write there: a container's cgroup namespace ends at its own `lxc.payload.<name>`.
- The monitor's child whose `NSpid` is exactly `[pid, 1]` is the container's init: pid 1 of a
  namespace one below the host's. Processes of the container are at least that deep, and what
  they start in namespaces of their own is deeper, so none of them matches, whatever it calls
  itself or wherever it moves in its cgroups.

Each process is held with a pidfd while it is read, so a pid reused in between is noticed. Every
read is bounded, and anything unexpected (no cgroup2, a name taken by another LXC, a monitor
that is not incusd's, no such init or two) gives None: the caller asks incusd then.
"""

from __future__ import annotations

import functools
import os

from coi_async.egress.netns import namespace_of, pidfd_alive

_READ_LIMIT = 16384
_MAX_TASKS = 64
_ENVIRON_LIMIT = 1 << 20
_MONITOR = b"[lxc monitor] "
_INCUS_DIR = "/var/lib/incus"
_DEFAULT_PROJECT = "default"


def incus_lxcpath(server_pid: int) -> str | None:
    """Where the incusd of process `server_pid` (on this machine) keeps its containers for LXC,
    which its monitors are named with; None when that process is not an incusd here."""
    try:
        exe = os.readlink(f"/proc/{server_pid}/exe")
    except OSError:
        return None
    environ = _read(f"/proc/{server_pid}/environ", limit=_ENVIRON_LIMIT)
    if os.path.basename(exe) != "incusd" or environ is None:
        return None
    found = [v for v in environ.split(b"\0") if v.startswith(b"INCUS_DIR=")]
    directory = os.fsdecode(found[-1].removeprefix(b"INCUS_DIR=")) if found else _INCUS_DIR
    return os.path.join(directory, "containers")


def lxc_name(project: str, instance: str) -> str:
    """The name incusd gives the container in LXC (and so in its cgroups)."""
    return instance if project == _DEFAULT_PROJECT else f"{project}_{instance}"


def init_on_host(lxcpath: str, project: str, instance: str) -> tuple[int, int] | None:
    """The container's init pid and the inode of its network namespace, for the incusd whose
    containers are under `lxcpath`; None when the host cannot tell (not running, or see the
    module docstring)."""
    root = _cgroup2_root()
    if root is None:
        return None
    name = lxc_name(project, instance)
    if "/" in name or "\0" in name or name.startswith("."):
        return None  # never a path of its own (incusd allows neither in its names)
    pids = _ints(_read(os.path.join(root, f"lxc.monitor.{name}", "cgroup.procs")))
    if pids is None or len(pids) != 1:
        return None
    monitor = pids[0]
    held = _hold(monitor)
    if held is None:
        return None
    try:
        if not _is_monitor_of(monitor, lxcpath, name):
            return None
        inits = [found for child in _children(monitor) if (found := _init_of(child, monitor)) is not None]
        if len(inits) != 1 or not pidfd_alive(held):
            return None
        return inits[0]
    finally:
        os.close(held)


@functools.cache
def _cgroup2_root() -> str | None:
    return cgroup2_root(_read("/proc/self/mountinfo", limit=_ENVIRON_LIMIT) or b"")


def cgroup2_root(mountinfo: bytes) -> str | None:
    """Where a process with this `/proc/self/mountinfo` sees the whole cgroup2 hierarchy; None
    without one."""
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(b" - ")
        parts, kind = fields.split(), rest.split()
        # A mount of a subtree (or of this process's cgroup namespace) would not show the top.
        if kind[:1] == [b"cgroup2"] and len(parts) >= 5 and parts[3] == b"/" and b"\\" not in parts[4]:
            return os.fsdecode(parts[4])
    return None


def _read(path: str, *, limit: int = _READ_LIMIT) -> bytes | None:
    """The file's bytes; None when it cannot be read or is longer than anything expected."""
    try:
        with open(path, "rb", buffering=0) as fh:
            data = fh.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


def _ints(data: bytes | None) -> list[int] | None:
    if data is None:
        return None
    words = data.split()
    if not all(w.isdigit() and len(w) <= 10 for w in words):
        return None
    return [int(w) for w in words]


def _hold(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _status(pid: int) -> dict[bytes, list[bytes]] | None:
    data = _read(f"/proc/{pid}/status")
    if data is None:
        return None
    fields: dict[bytes, list[bytes]] = {}
    for line in data.splitlines():
        key, sep, value = line.partition(b":")
        if sep:
            fields[key] = value.split()
    return fields


def _is_monitor_of(pid: int, lxcpath: str, name: str) -> bool:
    """Whether `pid` is the LXC monitor of `name` under `lxcpath`: root's, in the host's pid
    namespace, named for it (another incusd here has other paths) and in its cgroup."""
    status = _status(pid)
    cmdline = _read(f"/proc/{pid}/cmdline")
    cgroups = _read(f"/proc/{pid}/cgroup")
    if status is None or cmdline is None or cgroups is None:
        return False
    named = cmdline == _MONITOR + os.fsencode(f"{lxcpath} {name}") + b"\0"
    rooted = status.get(b"Uid", [])[:1] == [b"0"] and status.get(b"NSpid") == [str(pid).encode()]
    placed = f"0::/lxc.monitor.{name}".encode() in cgroups.splitlines()
    return named and rooted and placed


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for task in tasks[:_MAX_TASKS]:
        children += _ints(_read(f"/proc/{pid}/task/{task}/children")) or []
    return children


def _init_of(pid: int, monitor: int) -> tuple[int, int] | None:
    """`pid` and its network namespace's inode when it is the monitor's child at pid 1 of a
    namespace one below the host's; None otherwise."""
    held = _hold(pid)
    if held is None:
        return None
    try:
        status = _status(pid)
        if status is None:
            return None
        if status.get(b"PPid") != [str(monitor).encode()] or status.get(b"NSpid") != [
            str(pid).encode(),
            b"1",
        ]:
            return None
        inode = namespace_of(pid)
        return (pid, inode) if inode and pidfd_alive(held) else None
    finally:
        os.close(held)
