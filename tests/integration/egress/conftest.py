"""The egress tests' coi environment: busybox sessions with the prefix h11-, the test's own HOME
and runtime directory (so its own egress daemon, stopped at the end), and a config file of its
own that a test may write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from coi_async.incus import IncusClient
from tests.coi_cli import coi, isolated_env
from tests.helpers import BUSYBOX_IMAGE, require_image
from tests.integration.egress.support import PREFIX


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "coi.toml"
    path.write_text("")
    return path


@pytest.fixture
async def env(
    incus: IncusClient, incus_project: str, home: Path, config_file: Path
) -> AsyncIterator[dict[str, str]]:
    await require_image(incus, BUSYBOX_IMAGE)
    environ = isolated_env(
        home=home,
        project=incus_project,
        prefix=PREFIX,
        drop=("COI_", "CLAUDE_ON_INCUS_", "INCUS_PROJECT"),
        CLAUDE_ON_INCUS_IMAGE=BUSYBOX_IMAGE,
        COI_CONFIG=str(config_file),
    )
    try:
        yield environ
    finally:
        with anyio.move_on_after(30, shield=True):
            await coi("egress", "stop", env=environ)
