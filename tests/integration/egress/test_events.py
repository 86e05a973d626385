"""`coi events` carries the egress daemon's refusals of a running session."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.coi_cli import COI
from tests.integration.egress.support import PRIVATE, running_session

pytestmark = pytest.mark.incus


async def test_a_refusal_is_an_event(env: dict[str, str], workspace: Path) -> None:
    async with running_session(env, workspace, "restricted") as session:
        process = await anyio.open_process(
            [COI, "events", "--format", "json"], env=env, stderr=subprocess.DEVNULL
        )
        seen: list[dict[str, Any]] = []
        try:
            assert process.stdout is not None
            buffer = b""

            async def until(kind: str) -> dict[str, Any]:
                nonlocal buffer
                while True:
                    for event in seen:
                        if event["type"] == kind:
                            return event
                    assert process.stdout is not None
                    buffer += await process.stdout.receive()
                    *lines, buffer = buffer.split(b"\n")
                    seen.extend(json.loads(line) for line in lines if line)

            with anyio.fail_after(30):
                await until("resync")
                await session.inside(f"wget -q -O - http://{PRIVATE}/ 2>&1; echo")
                refused = await until("egress-refused")
        finally:
            process.kill()
            await process.aclose()
    assert refused["container"] == session.name
    assert (refused["host"], refused["port"]) == (PRIVATE, 80)
    assert "private address" in refused["detail"]
    assert refused["workspace"] == str(workspace)
