"""Shared fixtures: an isolated environment for every test, the asyncio backend, and a throwaway
Incus project per test session.

Tests that need incusd use the `incus_project` / `incus` fixtures. Without a reachable incusd they
skip with a message, except under CI (CI=true) or COI_REQUIRE_INCUS=1, where they fail: a green
run must never mean "skipped everything" (tests/helpers.py's `missing`, also for test images).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coi_async.errors import CoiError
from coi_async.incus import IncusClient, resolve_socket
from tests.coi_cli import home_env
from tests.helpers import busybox, no_incus, remove_instance, throwaway_project

# The COI_* variables the test run itself sets on purpose; every other one is the developer's.
KEPT_COI_VARIABLES = frozenset({"COI_REQUIRE_INCUS"})
# Also the developer's: the reference's config variables (a config layer), the Incus project a
# shell is in (the suite makes its own projects), and the tmux a shell may run inside.
# INCUS_SOCKET / INCUS_DIR stay: they say where incusd is.
DROPPED_PREFIXES = ("COI_", "CLAUDE_ON_INCUS_")
DROPPED_VARIABLES = ("INCUS_PROJECT", "TMUX", "TMUX_PANE")


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HOME and XDG directories, and none of the developer's COI_* variables,
    so nothing reads the developer's own config, sessions or credentials. Its HOME.

    A directory beside the test's `tmp_path`, which stays empty for the test. Session-scoped
    fixtures are made before this runs, and only talk to incusd (which HOME does not affect).
    """
    root = tmp_path_factory.mktemp("env")
    home = root / "home"
    home.mkdir()
    runtime = root / "runtime"
    runtime.mkdir(mode=0o700)
    for var in list(os.environ):
        if (var.startswith(DROPPED_PREFIXES) and var not in KEPT_COI_VARIABLES) or var in DROPPED_VARIABLES:
            monkeypatch.delenv(var)
    for var, value in home_env(home).items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return home


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.fixture(scope="session")
def incus_socket() -> str:
    endpoint = resolve_socket(os.environ)
    if not endpoint.socket.is_socket():
        no_incus(f"no incusd socket at {endpoint.socket}")
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
            no_incus(f"cannot use incusd: {exc}")
        yield name


@pytest.fixture
async def incus(incus_project: str) -> AsyncIterator[IncusClient]:
    async with IncusClient.connect(project=incus_project) as client:
        yield client


@pytest.fixture
def unique() -> str:
    """A short unique name stem for instances made by one test."""
    return f"t{secrets.token_hex(3)}"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty directory to use as HOME."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An empty directory to use as the workspace (beside, not inside, the isolated HOME)."""
    path = tmp_path / "ws"
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
