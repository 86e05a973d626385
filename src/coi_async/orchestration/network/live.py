"""`coi network allow|deny|log`: a running session's allowlist changed at once, and its log read.

Allow and deny rewrite the session's registration and have the daemon reload it before they
return, so the next request is judged by the new lists. A deny wins over everything (and an
allow of the same entry takes the deny back); an allow counts in every mode as a deliberate
exception, so `allow 10.0.0.5:8080` reaches that address from a restricted session too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Literal

import anyio
import msgspec

from coi_async.config import Config
from coi_async.config.network import HostSyntaxError, parse_entry
from coi_async.egress.connection import ConnectionRecord
from coi_async.egress.logfile import decode_line, read_records
from coi_async.errors import NotFoundError, UsageError
from coi_async.incus import IncusClient
from coi_async.orchestration.network import registry
from coi_async.orchestration.network.paths import EgressPaths
from coi_async.orchestration.network.remote_session import change_carried
from coi_async.orchestration.network.session import reload_daemon, session_log

FOLLOW_POLL_S = 0.5


def parse_host_argument(text: str) -> str:
    """HOST as `coi network allow|deny` takes it, canonical; UsageError naming it otherwise."""
    try:
        return str(parse_entry(text))
    except HostSyntaxError as exc:
        raise UsageError(f"invalid HOST '{text}': {exc}") from None


async def change_allowlist(
    incus: IncusClient, paths: EgressPaths, container: str, host: str, *, action: Literal["allow", "deny"]
) -> None:
    """Allow or deny `host` for the running session `container`, at once."""
    entry = parse_host_argument(host)
    if incus.remote:
        await change_carried(incus, container, entry, allow=action == "allow")
        return
    registration = registry.find(paths, container, incus.project)
    if registration is None:
        try:
            await incus.get_instance(container)
        except NotFoundError:
            raise UsageError(f"unknown container '{container}'") from None
        raise UsageError(
            f"container '{container}' has no egress through coi",
            hint="only coi sessions in restricted or allowlist mode (or open without a NIC) have one",
        )
    allow = [e for e in registration.allow if e != entry]
    deny = [e for e in registration.deny if e != entry]
    (allow if action == "allow" else deny).append(entry)
    registry.write(paths, msgspec.structs.replace(registration, allow=tuple(allow), deny=tuple(deny)))
    await reload_daemon(paths)


def log_paths(config: Config, project: str, container: str | None) -> list[str]:
    """The log of `container`, or of every session of the project."""
    if container is not None:
        return [session_log(config, project, container)]
    folder = Path(session_log(config, project, "x")).parent
    try:
        return sorted(str(p) for p in folder.glob("*.jsonl"))
    except OSError:
        return []


def records(paths: Iterable[str]) -> list[ConnectionRecord]:
    """Every record of the logs, oldest first."""
    found = [r for path in paths for r in read_records(path)]
    return sorted(found, key=lambda r: r.time)


class LogTail:
    """The records appended to some logs since the tail was made (rotation included)."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._positions: dict[str, tuple[int, int]] = {}
        for path in paths:
            try:
                info = os.stat(path)
                self._positions[path] = (info.st_ino, info.st_size)
            except OSError:
                self._positions[path] = (0, 0)

    def add(self, path: str) -> None:
        """Follow `path` too, from its start (a log that appeared after the tail was made)."""
        self._positions.setdefault(path, (0, 0))

    def new_records(self) -> list[ConnectionRecord]:
        return [record for path in self._positions for record in self._new_in(path)]

    def _new_in(self, path: str) -> list[ConnectionRecord]:
        inode, offset = self._positions[path]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return []
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if info.st_ino != inode or info.st_size < offset:
                offset = 0  # rotated: a new file
            fh.seek(offset)
            data = fh.read()
        complete = data.rfind(b"\n") + 1
        self._positions[path] = (info.st_ino, offset + complete)
        found = [decode_line(line) for line in data[:complete].splitlines()]
        return [r for r in found if r is not None]


async def follow(paths: Iterable[str]) -> AsyncIterator[ConnectionRecord]:
    """The records written to the logs from now on, until cancelled."""
    tail = LogTail(paths)
    while True:
        for record in tail.new_records():
            yield record
        await anyio.sleep(FOLLOW_POLL_S)
