"""Shared fixtures: the asyncio backend, and a throwaway Incus project per test session.

Tests that need incusd use the `incus_project` / `incus` fixtures. Without a reachable incusd they
skip with a message, except under CI (CI=true) or COI_REQUIRE_INCUS=1, where they fail: a green
run must never mean "skipped everything".
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from coi_async.errors import CoiError
from coi_async.incus import IncusClient, resolve_socket
from tests.helpers import busybox, remove_instance, throwaway_project


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
    async with contextlib.AsyncExitStack() as stack:
        try:
            name = await stack.enter_async_context(
                throwaway_project("coi-test-", description="coi-async test run; safe to delete")
            )
        except CoiError as exc:
            _no_incus(f"cannot use incusd: {exc}")
        yield name


@pytest.fixture
async def incus(incus_project: str) -> AsyncIterator[IncusClient]:
    async with IncusClient.connect(project=incus_project) as client:
        yield client


@pytest.fixture
def unique() -> Iterator[str]:
    """A short unique name stem for instances made by one test."""
    return f"t{secrets.token_hex(3)}"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty directory to use as HOME."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def box_name(unique: str) -> str:
    """The name of the `box` container; a module overrides it to keep its own name prefix."""
    return f"{unique}-box"


@pytest.fixture
async def box(incus: IncusClient, box_name: str) -> AsyncIterator[str]:
    """A running busybox container, removed after the test."""
    await incus.create_instance(busybox(box_name))
    try:
        yield box_name
    finally:
        await remove_instance(incus, box_name)
