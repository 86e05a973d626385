"""The fixtures of the remote tests: a remote made of this machine's incusd over loopback HTTPS
(harness.py), in the shell world of tests/integration/shell_harness.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.remote.harness import PREFIX, Remotes
from tests.integration.shell_harness import ShellWorld
from tests.integration.test_https import loopback_url


@pytest.fixture
def shell_prefix() -> str:
    return PREFIX


@pytest.fixture
async def remotes(world: ShellWorld) -> AsyncIterator[Remotes]:
    r = Remotes(world, await loopback_url(world.incus))
    try:
        yield r
    finally:
        await r.clean()
