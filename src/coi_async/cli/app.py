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
    from coi_async.incus.endpoint import HttpsEndpoint
    from coi_async.remotes import Remote


# How long a remote may take to answer the first request of a command.
REMOTE_ANSWER_S = 15.0


@dataclass
class App:
    debug: bool = False
    project: str | None = None
    remote: str | None = None  # --remote / $COI_REMOTE
    _config: Config | None = field(default=None, repr=False)
    _remote: tuple[str, Remote | None] | None = field(default=None, repr=False)

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
        """--project / $COI_INCUS_PROJECT, else $INCUS_PROJECT, else the remote's own (given to
        `coi remote add`), else `incus.project` from config.

        None leaves the choice to the client (incus-user's own project, else default).
        """
        return self._project_of(self._chosen()[1])

    def _project_of(self, remote: Remote | None) -> str | None:
        configured = self.config().incus.project
        return (
            self.project
            or os.environ.get("INCUS_PROJECT")
            or (remote.project if remote is not None and remote.project else None)
            or (configured if configured != "default" else None)
        )

    def _chosen(self) -> tuple[str, Remote | None]:
        if self._remote is None:
            from coi_async.orchestration.remotes import store as remote_store
            from coi_async.remotes import LOCAL, choose

            configured = self.config().incus.remote
            if (self.remote or configured) == LOCAL:
                self._remote = (LOCAL, None)  # said outright: the list of remotes is not read
            else:
                self._remote = choose(self.remote, {}, configured, remote_store.load())
        return self._remote

    def remote_name(self) -> str:
        """The remote commands work on: --remote, else `[incus] remote`, else `coi remote switch`'s
        choice, else `local` (ConfigError for a name never added)."""
        return self._chosen()[0]

    def is_remote(self) -> bool:
        return self._chosen()[1] is not None

    def endpoint(self) -> HttpsEndpoint | None:
        """How to reach the chosen remote's incusd; None for local (the unix socket)."""
        from coi_async.orchestration.remotes import store as remote_store

        name, remote = self._chosen()
        return None if remote is None else remote_store.endpoint(name, remote)

    def remote_workspace_root(self) -> str:
        """`[remotes.NAME] workspace_root` of the chosen remote ("" when not set)."""
        settings = self.config().remotes.get(self.remote_name())
        return settings.workspace_root if settings else ""

    def remote_names(self) -> list[str]:
        """`local` and every remote `coi remote add` added (sorted), as the store has them now."""
        from coi_async.orchestration.remotes import store as remote_store
        from coi_async.remotes import LOCAL

        return [LOCAL, *sorted(remote_store.load().remotes)]

    @asynccontextmanager
    async def incus(self) -> AsyncIterator[IncusClient]:
        name, remote = self._chosen()
        async with self._connect(name, remote) as client:
            yield client

    @asynccontextmanager
    async def incus_of(self, name: str) -> AsyncIterator[IncusClient]:
        """A client of the remote `name` (or local) as the store has it now, in the project a
        command given `--remote NAME` would use; ConfigError for a remote that is not (or no
        longer) there."""
        from coi_async.orchestration.remotes import store as remote_store
        from coi_async.remotes import LOCAL, choose

        chosen = (LOCAL, None) if name == LOCAL else choose(name, {}, "", remote_store.load())
        async with self._connect(*chosen) as client:
            yield client

    @asynccontextmanager
    async def _connect(self, name: str, remote: Remote | None) -> AsyncIterator[IncusClient]:
        # Imported here: aiohttp alone costs ~150 ms, which `coi version` should not pay.
        from coi_async.incus import IncusClient
        from coi_async.orchestration.remotes import store as remote_store

        endpoint = None if remote is None else remote_store.endpoint(name, remote)
        async with IncusClient.connect(endpoint, project=self._project_of(remote)) as client:
            if endpoint is not None:
                await self._check_remote(client, name, endpoint.url)
            yield client

    async def _check_remote(self, client: IncusClient, name: str, url: str) -> None:
        """A remote answers, and trusts coi, within a deadline: past the connect and the TLS
        handshake (which have their own), a server that never answers is an error, not a hang."""
        import anyio

        from coi_async.errors import IncusError, IncusUnavailableError

        try:
            with anyio.fail_after(REMOTE_ANSWER_S):
                info = await client.server_info()
        except TimeoutError:
            raise IncusUnavailableError(
                f"remote '{name}' ({url}) did not answer within {REMOTE_ANSWER_S:g}s",
                hint="check that the server is up and not overloaded",
            ) from None
        if info.auth != "trusted":
            raise IncusError(
                f"remote '{name}' ({url}) does not trust coi's certificate (auth: {info.auth})",
                hint="its trust was removed there? add the remote again with a new token",
            )
