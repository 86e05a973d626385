"""The object every command receives: settings from the global flags and a way to reach incusd."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coi_async.config import Config
    from coi_async.incus import IncusClient


@dataclass
class App:
    debug: bool = False
    project: str | None = None
    _config: Config | None = field(default=None, repr=False)

    def config(
        self, *, profile: str | None = None, image: str | None = None, persistent: bool | None = None
    ) -> Config:
        """The resolved configuration (files, environment, profile, flags), read on first use.

        Read lazily so that a broken config file does not stop `coi version` or `--help`.
        """
        if self._config is None or profile or image or persistent is not None:
            from coi_async.cli.config_loader import load_config

            config = load_config(profile=profile, image=image, persistent=persistent)
            if not (profile or image or persistent is not None):
                self._config = config
            return config
        return self._config

    def incus_project(self) -> str | None:
        """--project / $COI_INCUS_PROJECT, else $INCUS_PROJECT, else `incus.project` from config.

        None leaves the choice to the client (incus-user's own project, else default).
        """
        configured = self.config().incus.project
        return (
            self.project
            or os.environ.get("INCUS_PROJECT")
            or (configured if configured != "default" else None)
        )

    @asynccontextmanager
    async def incus(self) -> AsyncIterator[IncusClient]:
        # Imported here: aiohttp alone costs ~150 ms, which `coi version` should not pay.
        from coi_async.incus import IncusClient

        async with IncusClient.connect(project=self.incus_project()) as client:
            yield client
