"""`IncusClient`: one object per connection, one method per endpoint coi uses.

The methods live in one module per resource (instances, snapshots, exec, files, images,
projects, events), as the Go client does; this class only joins them and opens the connection.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from coi_async.incus.certificates import CertificatesApi
from coi_async.incus.cluster import ClusterApi
from coi_async.incus.endpoint import Endpoint, UnixEndpoint, resolve_socket
from coi_async.incus.events import EventsApi
from coi_async.incus.files import FilesApi
from coi_async.incus.images import ImagesApi
from coi_async.incus.instances import InstancesApi
from coi_async.incus.models import ServerInfo
from coi_async.incus.projects import ProfilesApi, ProjectsApi, StoragePoolsApi
from coi_async.incus.snapshots import SnapshotsApi
from coi_async.incus.transport import Transport


class IncusClient(
    InstancesApi,
    SnapshotsApi,
    FilesApi,
    ImagesApi,
    ProjectsApi,
    ProfilesApi,
    StoragePoolsApi,
    EventsApi,
    CertificatesApi,
    ClusterApi,
):
    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        endpoint: Endpoint | None = None,
        *,
        project: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> AsyncIterator[IncusClient]:
        """Connect to incusd: the given endpoint, else the local socket the Go client would use.

        The project is the one given, else `$INCUS_PROJECT`, else incus-user's own, else default.
        """
        environ = os.environ if env is None else env
        if endpoint is None:
            endpoint = resolve_socket(environ)
        default = endpoint.default_project if isinstance(endpoint, UnixEndpoint) else None
        chosen = project or environ.get("INCUS_PROJECT") or default or "default"
        async with Transport.open(endpoint) as transport:
            yield cls(transport, project=chosen)

    @property
    def remote(self) -> bool:
        """Whether incusd is reached over HTTPS (a remote), not this machine's unix socket."""
        return self._transport.remote

    def in_project(self, project: str) -> IncusClient:
        """The same connection, scoped to another project."""
        return IncusClient(self._transport, project=project)

    async def server_info(self, *, cached: bool = False) -> ServerInfo:
        """GET /1.0. With `cached`, the connection's last answer when it has one: for what does
        not change while a command runs (clustered or not, the storage drivers, the server's
        config as a launch reads it), never for what may (the trust `remote add` waits for).
        Its `environment.project` is then the project of whichever client asked."""
        if cached and isinstance(self._transport.server_info, ServerInfo):
            return self._transport.server_info
        info = await self._get("/1.0", ServerInfo, what="server info")
        self._transport.server_info = info
        return info

    async def update_server_config(self, config: dict[str, str]) -> None:
        """Set server configuration keys, leaving the others as they are."""
        await self._transport.request("PATCH", "/1.0", body={"config": config})
