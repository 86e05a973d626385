"""Shared fixtures: the asyncio backend, and a throwaway Incus project per test session.

Tests that need incusd use the `incus_project` / `incus` fixtures. Without a reachable incusd they
skip with a message, except under CI (CI=true) or COI_REQUIRE_INCUS=1, where they fail: a green
run must never mean "skipped everything".
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from coi_async.errors import CoiError, NotFoundError
from coi_async.incus import IncusClient, resolve_socket

BUSYBOX_IMAGE = "coi-test-busybox"
DEBIAN_IMAGE = "coi-test-debian"


def incus_required() -> bool:
    return os.environ.get("COI_REQUIRE_INCUS") == "1" or os.environ.get("CI", "").lower() == "true"


def _no_incus(reason: str) -> None:
    message = f"{reason}; start incusd with `sudo bash scripts/setup-incus`"
    if incus_required():
        pytest.fail(f"incusd is required here (CI or COI_REQUIRE_INCUS=1): {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.fixture(scope="session")
def incus_socket() -> str:
    endpoint = resolve_socket(os.environ)
    if not endpoint.socket.is_socket():
        _no_incus(f"no incusd socket at {endpoint.socket}")
    return str(endpoint.socket)


@pytest.fixture(scope="session")
async def incus_project(incus_socket: str) -> AsyncIterator[str]:
    """A throwaway project sharing the default project's images and profiles, removed at the end."""
    name = f"coi-test-{secrets.token_hex(4)}"
    try:
        async with IncusClient.connect() as client:
            await client.create_project(
                name,
                config={"features.images": "false", "features.profiles": "false"},
                description="coi-async test run; safe to delete",
            )
    except CoiError as exc:
        _no_incus(f"cannot use incusd: {exc}")
    try:
        yield name
    finally:
        with anyio.move_on_after(180, shield=True):
            async with IncusClient.connect() as client:
                await delete_project_fully(client, name)


async def delete_project_fully(client: IncusClient, name: str) -> None:
    """Delete a test project and every instance in it.

    Never `?force=true`: on incusd 6.0 that also wipes the default project's default profile
    when the project shares it (features.profiles=false).
    """
    scoped = client.in_project(name)
    try:
        instances = await scoped.list_instances()
    except NotFoundError:
        return

    async def remove(instance_name: str, running: bool) -> None:
        try:
            if running:
                await scoped.stop_instance(instance_name, force=True)
            await scoped.delete_instance(instance_name)
        except CoiError:
            pass

    async with anyio.create_task_group() as tg:
        for instance in instances:
            tg.start_soon(remove, instance.name, instance.running)
    await client.delete_project(name)


@pytest.fixture
async def incus(incus_project: str) -> AsyncIterator[IncusClient]:
    async with IncusClient.connect(project=incus_project) as client:
        yield client


@pytest.fixture
def unique() -> Iterator[str]:
    """A short unique name stem for instances made by one test."""
    return f"t{secrets.token_hex(3)}"
