"""The object every command receives: settings from the global flags and a way to reach incusd."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coi_async.incus import IncusClient


@dataclass
class App:
    debug: bool = False
    project: str | None = None

    @asynccontextmanager
    async def incus(self) -> AsyncIterator[IncusClient]:
        # Imported here: aiohttp alone costs ~150 ms, which `coi version` should not pay.
        from coi_async.incus import IncusClient

        async with IncusClient.connect(project=self.project) as client:
            yield client
