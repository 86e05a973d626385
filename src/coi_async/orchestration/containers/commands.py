"""Single-container operations behind `coi container ...`, with errors a user can act on.

incusd's own messages name database tables and project paths ("Failed to fetch instance "x" in
project "y": Instance not found"); these functions turn the ones a user meets into one sentence
about *their* container, and leave nothing half-made behind when a launch fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio

from coi_async.errors import (
    BadRequestError,
    CoiError,
    ConflictError,
    IncusApiError,
    NotFoundError,
    OperationFailedError,
)
from coi_async.incus import IncusClient
from coi_async.incus.models import InstancePatch, InstanceSource, InstancesPost

# What Docker inside a container needs. Set at creation, so they are in force from the first boot
# (the reference sets them after `incus launch`, racing the boot: upstream #177).
DOCKER_NESTING = {
    "security.nesting": "true",
    "security.syscalls.intercept.mknod": "true",
    "security.syscalls.intercept.setxattr": "true",
}

# How long a failed launch may spend removing what it made.
_CLEANUP_S = 30


class ContainerNotFoundError(CoiError):
    """The named container does not exist (in the current project)."""


def instance_missing(exc: IncusApiError) -> bool:
    """Whether a 404 is about the instance itself (not a file or image inside the request)."""
    return isinstance(exc, NotFoundError) and "Instance not found" in str(exc)


@contextlib.contextmanager
def container_errors(name: str) -> Iterator[None]:
    """Re-raise incusd's answers about `name` as sentences about the container."""
    try:
        yield
    except NotFoundError as exc:
        if instance_missing(exc):
            raise ContainerNotFoundError(f"container '{name}' not found") from exc
        raise
    except (OperationFailedError, BadRequestError) as exc:
        text = str(exc)
        for marker, sentence in (
            ("already running", "is already running"),
            ("already stopped", "is already stopped"),
            ("Instance is running", "is running (stop it first, or use --force)"),
            ("Instance is not running", "is not running"),
        ):
            if marker in text:
                raise CoiError(f"container '{name}' {sentence}") from exc
        raise


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
        config=dict(DOCKER_NESTING),
    )
    try:
        await incus.create_instance(request)
    except ConflictError as exc:
        # Someone else's container: not ours to clean up.
        raise CoiError(f"container '{name}' already exists") from exc
    except BaseException as exc:
        # Created but not started, or cancelled mid-way: remove what this launch made.
        with anyio.move_on_after(_CLEANUP_S, shield=True), contextlib.suppress(CoiError):
            await force_delete(incus, name)
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


async def force_delete(incus: IncusClient, name: str) -> None:
    """Stop at once if running, then delete."""
    with contextlib.suppress(OperationFailedError):  # already stopped
        await incus.stop_instance(name, force=True)
    with contextlib.suppress(NotFoundError):
        # An ephemeral container is gone as soon as it stops.
        await incus.delete_instance(name)


async def delete(incus: IncusClient, name: str, *, force: bool) -> None:
    with container_errors(name):
        if not force:
            await incus.delete_instance(name)
            return
        await incus.get_instance(name)  # a missing name is an error, even with --force
        await force_delete(incus, name)


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
        except IncusApiError as exc:
            if "Missing source path" in str(exc):
                raise CoiError(f"source does not exist: {source}") from exc
            if "idmap" in str(exc).lower():
                raise CoiError(
                    f"cannot mount {source} with shift=true: {exc}",
                    hint="this host cannot shift ids on mounts; try --no-shift",
                ) from exc
            raise
