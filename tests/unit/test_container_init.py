"""Where the daemon looks for containers' cgroups (egress/container_init.py): the cgroup2 mount
that shows the whole hierarchy, as /proc/self/mountinfo lists it."""

from __future__ import annotations

from coi_async.egress.container_init import cgroup2_root, init_on_host, lxc_name

HYBRID = b"""\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 25 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
"""


def test_the_cgroup2_mount_of_a_hybrid_or_unified_host() -> None:
    assert cgroup2_root(HYBRID) == "/sys/fs/cgroup/unified"
    unified = b"29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n"
    assert cgroup2_root(unified) == "/sys/fs/cgroup"


def test_no_cgroup2_or_only_a_subtree_of_it_gives_nothing() -> None:
    v1_only = b"\n".join(line for line in HYBRID.splitlines() if b"cgroup2" not in line)
    assert cgroup2_root(v1_only) is None
    # Seen from inside a cgroup namespace, or a subtree bind-mounted: not the top.
    subtree = b"36 35 0:31 /lxc.payload.c1 /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"
    assert cgroup2_root(subtree) is None
    escaped = b"36 35 0:31 / /mnt/cg\\040roups rw,relatime - cgroup2 cgroup2 rw\n"
    assert cgroup2_root(escaped) is None
    assert cgroup2_root(b"garbage\n\n- cgroup2\n") is None


def test_the_lxc_name_of_an_instance() -> None:
    assert lxc_name("default", "coi-1") == "coi-1"
    assert lxc_name("team", "coi-1") == "team_coi-1"


def test_a_name_that_would_be_a_path_is_never_looked_up() -> None:
    assert init_on_host("/var/lib/incus/containers", "..", "x") is None
    assert init_on_host("/var/lib/incus/containers", "default", "../../etc") is None
