"""Projects, profiles and storage pools."""

from __future__ import annotations

from coi_async.incus.base import ApiBase, decode
from coi_async.incus.models import AsyncResponse, Profile, Project, StoragePool
from coi_async.incus.paths import profile_path, project_path, storage_pool_path


class ProjectsApi(ApiBase):
    async def list_projects(self) -> list[Project]:
        envelope = await self._transport.request("GET", "/1.0/projects", params={"recursion": "1"})
        return decode(envelope.metadata, list[Project], what="project list")

    async def get_project(self, name: str) -> Project:
        envelope = await self._transport.request("GET", project_path(name))
        return decode(envelope.metadata, Project, what="project")

    async def create_project(
        self, name: str, *, config: dict[str, str] | None = None, description: str = ""
    ) -> None:
        await self._transport.request(
            "POST", "/1.0/projects", body=Project(name=name, config=config or {}, description=description)
        )

    async def delete_project(self, name: str) -> None:
        """Delete an empty project.

        There is deliberately no `force`: incusd 6.0's forced project delete also wipes the
        *default* project's default profile when the project shares profiles with it
        (features.profiles=false). Empty the project first instead.
        """
        envelope = await self._transport.request("DELETE", project_path(name))
        if isinstance(envelope, AsyncResponse):
            await self.wait_operation(envelope.operation)


class ProfilesApi(ApiBase):
    async def list_profiles(self) -> list[Profile]:
        return await self._get("/1.0/profiles", list[Profile], params={"recursion": "1"}, what="profiles")

    async def get_profile(self, name: str) -> Profile:
        return await self._get(profile_path(name), Profile, what="profile")

    async def create_profile(self, profile: Profile) -> None:
        await self._call("POST", "/1.0/profiles", body=profile)

    async def update_profile(self, profile: Profile) -> None:
        await self._call("PUT", profile_path(profile.name), body=profile)

    async def delete_profile(self, name: str) -> None:
        await self._call("DELETE", profile_path(name))


class StoragePoolsApi(ApiBase):
    async def get_storage_pool(self, name: str) -> StoragePool:
        """A storage pool (server-wide, not per project) with its driver."""
        return await self._get(storage_pool_path(name), StoragePool, what="storage pool")

    async def create_storage_pool(
        self, name: str, driver: str, *, config: dict[str, str] | None = None
    ) -> None:
        await self._run(
            "POST", "/1.0/storage-pools", body={"name": name, "driver": driver, "config": config or {}}
        )

    async def delete_storage_pool(self, name: str) -> None:
        """Delete an unused storage pool."""
        await self._run("DELETE", storage_pool_path(name))
