"""`coi events` carries on when incusd restarts: against a private incusd (tests/private_incusd.py),
restarted under the running stream, with busybox containers named like sessions (prefix `h14r-`)."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from coi_async.incus import IncusClient, UnixEndpoint
from coi_async.naming import KEY_WORKSPACE
from tests.coi_cli import COI, isolated_env
from tests.helpers import busybox
from tests.private_incusd import PrivateIncusd, private_incusd

pytestmark = pytest.mark.incus

PREFIX = "h14r-"


@pytest.fixture
async def daemon() -> AsyncIterator[PrivateIncusd]:
    async with private_incusd() as running:
        yield running


class Stream:
    """The NDJSON lines of a running `coi events --format json`."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.seen: list[dict[str, Any]] = []
        self._buffer = b""

    async def until(self, kind: str, *, container: str | None = None, count: int = 1) -> dict[str, Any]:
        """The `count`-th event of type `kind` (for `container`, if given), read as far as needed."""
        assert self.process.stdout is not None
        while True:
            found = [e for e in self.seen if e["type"] == kind and container in (None, e.get("container"))]
            if len(found) >= count:
                return found[count - 1]
            self._buffer += await self.process.stdout.receive()
            *lines, self._buffer = self._buffer.split(b"\n")
            self.seen.extend(json.loads(line) for line in lines if line)


async def test_the_stream_survives_an_incusd_restart_with_a_resync(daemon: PrivateIncusd, home: Path) -> None:
    ws = secrets.token_hex(4)
    names = [f"{PREFIX}{ws}-{slot}" for slot in (1, 2)]
    env = isolated_env(home=home, project="default", prefix=PREFIX, INCUS_SOCKET=str(daemon.socket))
    async with IncusClient.connect(UnixEndpoint(daemon.socket), project="default") as incus:
        for name in names:
            await incus.create_instance(busybox(name, config={KEY_WORKSPACE: f"/tmp/h14r-ws-{ws}"}))
    process = await anyio.open_process([COI, "events", "--format", "json"], env=env, stderr=subprocess.PIPE)
    stream = Stream(process)
    try:
        with anyio.fail_after(60):
            await stream.until("resync")
            await daemon.restart()
            after = await stream.until("resync", count=2)
            async with IncusClient.connect(UnixEndpoint(daemon.socket), project="default") as incus:
                await incus.stop_instance(names[1], force=True)
                await stream.until("instance-stopped", container=names[1])
    finally:
        process.kill()
        assert process.stderr is not None
        with anyio.move_on_after(5):
            err = b"".join([chunk async for chunk in process.stderr])
        await process.aclose()
    assert {s["container"] for s in after["sessions"]} == set(names)
    assert b"Traceback" not in err, err.decode(errors="replace")
    assert stream.seen[0]["type"] == "resync"  # a consumer's state starts from one
