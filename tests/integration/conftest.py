"""The `world` fixture of the `coi shell` / `coi attach` tests (tests/integration/shell_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coi_async.incus import IncusClient
from tests.integration.shell_harness import PREFIX, ShellWorld


@pytest.fixture
def shell_prefix() -> str:
    """coi's container prefix in `world`; a module overrides it for names of its own."""
    return PREFIX


@pytest.fixture
def shell_config() -> str:
    """What `world` appends to its config.toml (after `[defaults]` and the image); a module
    overrides it for a config of its own."""
    return ""


@pytest.fixture
async def world(
    tmp_path: Path, incus_project: str, incus: IncusClient, shell_config: str, shell_prefix: str
) -> AsyncIterator[ShellWorld]:
    """A `ShellWorld` in the test's tmp_path and Incus project. Afterwards its terminal log is
    printed (pytest shows it when the test failed) and its containers are removed."""
    w = ShellWorld(tmp_path, incus_project, incus, prefix=shell_prefix)
    w.setup(config=shell_config)
    try:
        yield w
    finally:
        w.show_terminal()
        await w.remove_all()
