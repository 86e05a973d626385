"""Helpers shared by the test modules: test images, instances, throwaway projects, and what to do
when incusd or a test image is missing."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from typing import NoReturn

import anyio
import pytest

from coi_async.errors import CoiError, IncusApiError, NotFoundError
from coi_async.incus import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost

BUSYBOX_IMAGE = "coi-test-busybox"
DEBIAN_IMAGE = "coi-test-debian"

# Share the default project's images and profiles.
SHARED_PROJECT_CONFIG = {"features.images": "false", "features.profiles": "false"}


def incus_required() -> bool:
    """Under CI (CI=true) or COI_REQUIRE_INCUS=1 a missing incusd or test image fails the test."""
    return os.environ.get("COI_REQUIRE_INCUS") == "1" or os.environ.get("CI", "").lower() == "true"


def missing(thing: str, message: str) -> NoReturn:
    """Skip the test because `thing` is missing, or fail it where incusd is required: a green run
    must never mean "skipped everything"."""
    if incus_required():
        pytest.fail(f"{thing} is required here (CI or COI_REQUIRE_INCUS=1): {message}")
    pytest.skip(message)


def no_incus(reason: str) -> NoReturn:
    missing("incusd", f"{reason}; start incusd with `sudo bash scripts/setup-incus`")


async def require_image(incus: IncusClient, alias: str) -> None:
    """Skip (or fail, where incusd is required) unless the image `alias` exists."""
    if await incus.find_image(alias) is None:
        missing(f"image {alias}", f"image {alias} is not built (scripts/build-test-images)")


def from_image(
    name: str, image: str, *, start: bool = True, config: dict[str, str] | None = None
) -> InstancesPost:
    """The request for a container `name` made from the image alias `image`."""
    return InstancesPost(
        name=name,
        source=InstanceSource(type="image", alias=image),
        start=start,
        config=config or {},
    )


def busybox(name: str, *, start: bool = True, config: dict[str, str] | None = None) -> InstancesPost:
    """The request for a busybox container `name` (started unless start=False)."""
    return from_image(name, BUSYBOX_IMAGE, start=start, config=config)


@contextlib.asynccontextmanager
async def running(incus: IncusClient, image: str, *names: str) -> AsyncIterator[None]:
    """The containers `names` made from `image` and started, removed afterwards (also after a
    failure, and when making one of them failed). Fails when the image is not built."""
    await require_image(incus, image)
    try:
        for name in names:
            await incus.create_instance(from_image(name, image))
        yield
    finally:
        for name in names:
            await remove_instance(incus, name)


async def remove_instance(incus: IncusClient, name: str, *, limit_s: float = 30) -> None:
    """Force-stop and delete an instance; gone already is fine. Shielded, and bounded by `limit_s` seconds."""
    with anyio.move_on_after(limit_s, shield=True):
        with contextlib.suppress(CoiError):
            await incus.stop_instance(name, force=True)
        with contextlib.suppress(NotFoundError):
            await incus.delete_instance(name)


async def delete_project_fully(client: IncusClient, name: str) -> None:
    """Delete a test project and every instance in it.

    Never `?force=true`: on incusd 6.0 that also wipes the default project's default profile
    when the project shares it (features.profiles=false).
    """
    scoped = client.in_project(name)

    async def remove(instance_name: str, running: bool) -> None:
        try:
            if running:
                await scoped.stop_instance(instance_name, force=True)
            await scoped.delete_instance(instance_name)
        except CoiError:
            pass

    # An Incus-ephemeral container a `coi run` left powering itself off is deleted by incusd
    # a moment later: until then the project is not empty, so the round is tried again.
    for attempt in range(20):
        try:
            instances = await scoped.list_instances()
        except NotFoundError:
            return
        async with anyio.create_task_group() as tg:
            for instance in instances:
                tg.start_soon(remove, instance.name, instance.running)
        try:
            await client.delete_project(name)
            return
        except IncusApiError as exc:
            if "Only empty projects" not in str(exc) or attempt == 19:
                raise
        await anyio.sleep(0.5)


@contextlib.asynccontextmanager
async def throwaway_project(
    prefix: str, *, description: str = "coi-async test; safe to delete"
) -> AsyncIterator[str]:
    """A project `<prefix><hex>` sharing the default project's images and profiles; its name.

    Removed on the way out with `delete_project_fully`, shielded and bounded.
    """
    name = f"{prefix}{secrets.token_hex(4)}"
    async with IncusClient.connect() as client:
        await client.create_project(name, config=SHARED_PROJECT_CONFIG, description=description)
    try:
        yield name
    finally:
        with anyio.move_on_after(180, shield=True):
            async with IncusClient.connect() as client:
                await delete_project_fully(client, name)
