"""Instance configuration every coi container gets, shared by `coi container launch` and sessions."""

from __future__ import annotations

# What Docker inside a container needs. Set at creation, so they are in force from the first boot
# (the reference sets them after `incus launch`, racing the boot: upstream #177).
DOCKER_CONFIG: dict[str, str] = {
    "security.nesting": "true",
    "security.syscalls.intercept.mknod": "true",
    "security.syscalls.intercept.setxattr": "true",
}
