"""The set-up the benchmarks share: a throwaway Incus project and the containers in it.

`throwaway_project` makes the project (sharing the default project's images and profiles) and
removes it with everything in it afterwards; `launch` starts containers in it; `clear` empties it.
`runtime_dir` is a coi's own XDG_RUNTIME_DIR, and so its own egress daemon, gone afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator

import anyio

from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost
from coi_async.orchestration.containers import ops

SHARE_DEFAULT = {"features.images": "false", "features.profiles": "false"}


@contextlib.asynccontextmanager
async def throwaway_project(
    root: IncusClient, name: str, *, grace_s: float = 120
) -> AsyncIterator[IncusClient]:
    """The new project `name`, as a client of `root`'s connection scoped to it. On the way out,
    even when cancelled (for up to `grace_s` seconds), its instances and the project are deleted."""
    await root.create_project(name, config=SHARE_DEFAULT)
    incus = root.in_project(name)
    try:
        yield incus
    finally:
        with anyio.move_on_after(grace_s, shield=True):
            await clear(incus)
            # Never `?force=true` (it wipes the shared default profile on Incus 6.0).
            await root.delete_project(name)


@contextlib.contextmanager
def runtime_dir(label: str, coi: str) -> Iterator[str]:
    """A new XDG_RUNTIME_DIR for the coi executable `coi` (the egress daemon is per runtime
    directory, so each side of a comparison runs its own code's); afterwards the daemon the
    side started there is stopped and the directory removed."""
    with tempfile.TemporaryDirectory(prefix=f"bench-run-{label}-") as path:
        try:
            yield path
        finally:
            env = os.environ | {"XDG_RUNTIME_DIR": path}
            subprocess.run([coi, "egress", "stop"], env=env, capture_output=True, check=False, timeout=60)


def post(name: str, image: str) -> InstancesPost:
    """Create and start the container `name` from the image `image`."""
    return InstancesPost(name=name, source=InstanceSource(type="image", alias=image), start=True)


async def launch(incus: IncusClient, image: str, *names: str) -> None:
    """Create and start the containers `names` from `image`, all at once."""
    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(incus.create_instance, post(name, image))


async def clear(incus: IncusClient) -> None:
    """Remove every instance of the project, retrying while some are still busy."""
    for _ in range(30):
        instances = await incus.list_instances()
        if not instances:
            return

        async def one(name: str) -> None:
            try:
                await ops.force_stop(incus, name)
                await ops.delete(incus, name)
            except CoiError:
                pass

        async with anyio.create_task_group() as tg:
            for inst in instances:
                tg.start_soon(one, inst.name)
        await anyio.sleep(1)
