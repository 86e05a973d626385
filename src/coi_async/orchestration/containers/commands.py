"""Single-container operations behind `coi container ...`, with errors a user can act on.

incusd's own messages name database tables and project paths ("Failed to fetch instance "x" in
project "y": Instance not found"); these functions turn the ones a user meets, told apart by
their type (see `coi_async.incus.classify`), into one sentence about *their* container, and
leave nothing half-made behind when a launch fails. Stopping and removing go through
`containers.ops`, like every other flow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from coi_async.errors import (
    AlreadyRunningError,
    AlreadyStoppedError,
    CoiError,
    ConflictError,
    IdmapUnsupportedError,
    InstanceBusyError,
    InstanceNotFoundError,
    InstanceNotRunningError,
    InstanceRunningError,
    OperationFailedError,
    SourcePathMissingError,
)
from coi_async.incus import IncusClient
from coi_async.incus.models import InstancePatch, InstanceSource, InstancesPost
from coi_async.orchestration.containers import ops
from coi_async.orchestration.containers.config import DOCKER_CONFIG

# How long a failed launch may spend removing what it made.
_CLEANUP_S = 30.0


class ContainerNotFoundError(CoiError):
    """The named container does not exist (in the current project)."""


@contextlib.contextmanager
def container_errors(name: str) -> Iterator[None]:
    """Re-raise incusd's answers about `name` as sentences about the container."""
    try:
        yield
    except InstanceNotFoundError as exc:
        raise ContainerNotFoundError(f"container '{name}' not found") from exc
    except AlreadyRunningError as exc:
        raise CoiError(f"container '{name}' is already running") from exc
    except InstanceNotRunningError as exc:  # before its base class, AlreadyStoppedError
        raise CoiError(f"container '{name}' is not running") from exc
    except AlreadyStoppedError as exc:
        raise CoiError(f"container '{name}' is already stopped") from exc
    except InstanceRunningError as exc:
        raise CoiError(f"container '{name}' is running (stop it first, or use --force)") from exc


async def launch(incus: IncusClient, image: str, name: str, *, ephemeral: bool) -> None:
    """Create and start `name` from the local image `image`, ready for Docker inside.

    A duplicate name is refused before anything is made; if the start fails, the new container is
    removed again (shielded, bounded), so a failed launch leaves nothing behind.
    """
    request = InstancesPost(
        name=name,
        source=InstanceSource(type="image", alias=image),
        ephemeral=ephemeral,
        start=True,
        config=dict(DOCKER_CONFIG),
    )
    try:
        await incus.create_instance(request)
    except (ConflictError, InstanceBusyError) as exc:
        # Someone else's container (or their create of it, still running): not ours to clean up.
        raise CoiError(f"container '{name}' already exists") from exc
    except BaseException as exc:
        # Created but not started, or cancelled mid-way: remove what this launch made.
        await ops.remove_quietly(incus, name, bound_s=_CLEANUP_S)
        # incusd says "Image not provided for instance creation" for an unknown alias.
        if isinstance(exc, OperationFailedError) and await incus.find_image(image) is None:
            raise CoiError(f"image '{image}' not found", hint="see `coi image list --all`") from exc
        raise


async def start(incus: IncusClient, name: str) -> None:
    with container_errors(name):
        await incus.start_instance(name)


async def stop(incus: IncusClient, name: str, *, force: bool) -> None:
    with container_errors(name):
        await incus.stop_instance(name, force=force)


async def delete(incus: IncusClient, name: str, *, force: bool) -> None:
    with container_errors(name):
        if not force:
            await incus.delete_instance(name)
            return
        await incus.get_instance(name)  # a missing name is an error, even with --force
        await ops.force_stop(incus, name)
        await ops.delete(incus, name)


def disk_device(source: str, path: str, *, shift: bool) -> dict[str, str]:
    device = {"type": "disk", "source": source, "path": path}
    if shift:
        device["shift"] = "true"
    return device


async def add_disk(
    incus: IncusClient, name: str, device: str, source: str, path: str, *, shift: bool
) -> None:
    """Attach the host directory `source` at `path` (hot-plugged if the container runs)."""
    with container_errors(name):
        instance = await incus.get_instance(name)
        if device in instance.devices:
            # PATCH would silently replace the existing device of that name.
            raise CoiError(f"container '{name}' already has a device named '{device}'")
        try:
            await incus.update_instance(
                name, InstancePatch(devices={device: disk_device(source, path, shift=shift)})
            )
        except SourcePathMissingError as exc:
            raise CoiError(f"source does not exist: {source}") from exc
        except IdmapUnsupportedError as exc:
            raise CoiError(
                f"cannot mount {source} with shift=true: {exc}",
                hint="this host cannot shift ids on mounts; try --no-shift",
            ) from exc
