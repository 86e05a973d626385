"""Runs an interactive exec attached to this process's terminal; driven by a test through a pty."""

from __future__ import annotations

import sys

import anyio

from coi_async.cli.terminal import LocalTerminal
from coi_async.incus import IncusClient


async def main(project: str, instance: str, command: list[str]) -> int:
    async with IncusClient.connect(project=project) as client:
        return await client.exec_attached(instance, command, terminal=LocalTerminal(), env={"TERM": "xterm"})


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3:], backend="asyncio"))
