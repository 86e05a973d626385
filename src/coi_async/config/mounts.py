"""Mounts given on the command line (`--mount HOST:CONTAINER`), laid over the configured ones. Pure."""

from __future__ import annotations

import os.path
from collections.abc import Sequence

from coi_async.config.model import Mount
from coi_async.errors import UsageError


def parse_mount(spec: str, *, home: str, cwd: str) -> Mount:
    """`--mount HOST:CONTAINER`: the host side made absolute (~ expanded), the container side absolute."""
    parts = spec.split(":")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise UsageError(f"invalid mount format '{spec}': expected HOST:CONTAINER")
    host, container = parts
    if host == "~" or host.startswith("~/"):
        host = home + host[1:]
    if not container.startswith("/"):
        raise UsageError(f"invalid mount configuration: container path must be absolute: {container}")
    return Mount(os.path.normpath(os.path.join(cwd, host)), os.path.normpath(container))


def combine_mounts(configured: Sequence[Mount], given: Sequence[Mount]) -> tuple[Mount, ...]:
    """Config mounts, then command-line ones; a command-line mount replaces one at the same path.

    Raises UsageError when two container paths are equal or nested, or one is /workspace itself.
    """
    by_path = {m.container: m for m in configured}
    for mount in given:
        by_path[mount.container] = mount
    mounts = tuple(by_path.values())
    if "/workspace" in by_path:
        raise UsageError("invalid mount configuration: /workspace is where the workspace is mounted")
    paths = [m.container for m in mounts]
    for i, a in enumerate(paths):
        for b in paths[i + 1 :]:
            if a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/"):
                raise UsageError(
                    f"mount validation failed: nested mount paths detected: '{a}' and '{b}' conflict"
                )
    return mounts
