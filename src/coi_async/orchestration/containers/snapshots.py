"""Snapshots of one container, behind `coi snapshot create|list|restore|delete` (stateless).

Any container of the client's project may be named, as with `coi container ...`. Every name is
checked before anything is asked of incusd: a new snapshot's strictly, that of one to restore or
delete only as far as incusd would refuse it (so one taken with `incus` works too). An unknown
container or snapshot is told apart from incusd's answers by type only
(`coi_async.incus.classify`), so bad input changes nothing.

A restore needs the container stopped. A running one is brought down the way `coi shutdown`
does it, without the delete: a coi session's data is saved first (`bulk.lifecycle.SessionSaver`,
the one save every flow shares; a failed save leaves the container as it was), then it is stopped
gracefully (forced after `grace_s`), restored and started again. From the stop on, the work runs
shielded and bounded, so an interrupted restore never leaves the container stopped halfway. A
stopped container is only restored, and left stopped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator

import anyio
import msgspec

from coi_async.errors import (
    CoiError,
    ConflictError,
    InstanceNotFoundError,
    NotFoundError,
    UsageError,
)
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance, InstancePatch
from coi_async.naming import KEY_RESTORING
from coi_async.orchestration.bulk.lifecycle import SessionSaver
from coi_async.orchestration.containers import ops
from coi_async.orchestration.events import Emit, StepStarted, ignore
from coi_async.orchestration.sessions.model import session_of

# Stricter than incusd (which refuses only "/" and spaces): what a shell, a URL and a file name
# all take as they are, starting with a letter or digit so that it never reads as a flag.
MAX_NAME_LEN = 63
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_LEN - 1}}}")
DEFAULT_PREFIX = "snap-"
_DEFAULT_ATTEMPTS = 5

# The steps of a restore (stable `StepStarted.step` ids); the CLI says them in words.
SAVING = "saving"
SAVED = "saved"  # detail: the session directory
NO_SESSION_DATA = "no-session-data"  # detail: the tool's config directory
STOPPING = "stopping"  # detail: the graceful timeout in seconds
FORCE_STOPPING = "force-stopping"
RESTORING = "restoring"  # detail: the snapshot
STARTING = "starting"

# incusd's own bounds: a restore copies a whole filesystem on drivers without cheap snapshots.
RESTORE_S = 600.0
START_S = 180.0


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    created_at: str  # RFC 3339, from incusd
    size_bytes: int | None  # None when the storage driver does not tell


class Restored(msgspec.Struct, frozen=True, kw_only=True):
    container: str
    snapshot: str
    restarted: bool  # it was running, was stopped for the restore and runs again
    session_dir: str | None = None  # where the session's data was saved first


def check_snapshot_name(name: str) -> str:
    """`name` if it is a snapshot name coi accepts, else a UsageError saying what is."""
    if _NAME.fullmatch(name) is None:
        raise UsageError(
            f"invalid snapshot name {name!r}: use 1-{MAX_NAME_LEN} letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


def check_existing_name(name: str) -> str:
    """`name` if it can name a snapshot incusd holds (which may have been made with `incus`
    under laxer rules than `check_snapshot_name`'s), else a UsageError."""
    if name in ("", ".", "..") or "/" in name or any(c.isspace() or not c.isprintable() for c in name):
        raise UsageError(f"invalid snapshot name {name!r}: it may not be empty or hold '/' or spaces")
    return name


def default_snapshot_name(now: dt.datetime) -> str:
    """`snap-YYYYMMDD-HHMMSS` of `now` (local time, as `coi build` names its images)."""
    return f"{DEFAULT_PREFIX}{now:%Y%m%d-%H%M%S}"


def free_name(base: str, taken: set[str]) -> str:
    """`base`, else `base-2`, `base-3`, ...: the first one not in `taken`."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def unknown_container(container: str) -> UsageError:
    return UsageError(f"unknown container '{container}'")


def unknown_snapshot(container: str, snapshot: str) -> UsageError:
    return UsageError(
        f"unknown snapshot '{snapshot}' of container '{container}'",
        hint=f"see 'coi snapshot list {container}'",
    )


@contextlib.contextmanager
def snapshot_errors(container: str, snapshot: str | None = None) -> Iterator[None]:
    """incusd's answers about `container` (and its `snapshot`) as sentences about them."""
    try:
        yield
    except InstanceNotFoundError as exc:  # before its base class, NotFoundError
        raise unknown_container(container) from exc
    except NotFoundError as exc:
        if snapshot is None:
            raise
        raise unknown_snapshot(container, snapshot) from exc
    except ConflictError as exc:
        if snapshot is None:
            raise
        raise CoiError(f"snapshot '{snapshot}' of container '{container}' already exists") from exc


async def _container(incus: IncusClient, container: str) -> Instance:
    if container in ("", ".", ".."):
        raise unknown_container(container)
    instance = await ops.state(incus, container)
    if instance is None:
        raise unknown_container(container)
    return instance


async def list_snapshots(incus: IncusClient, container: str) -> list[Snapshot]:
    """The container's snapshots, oldest first."""
    await _container(incus, container)  # incusd lists none for a container that does not exist
    with snapshot_errors(container):
        found = await incus.list_instance_snapshots(container)
    return [
        Snapshot(name=s.name, created_at=s.created_at, size_bytes=s.size if s.size >= 0 else None)
        for s in found
    ]


async def create_snapshot(
    incus: IncusClient, container: str, name: str | None = None, *, now: dt.datetime | None = None
) -> str:
    """Take a snapshot called `name` (default: `snap-<local time>`, with `-2`, ... when that is
    taken); its name. A given name that is taken is an error."""
    if name is not None:
        check_snapshot_name(name)
    await _container(incus, container)
    if name is not None:
        with snapshot_errors(container, name):
            await incus.create_instance_snapshot(container, name)
        return name
    base = default_snapshot_name(now or dt.datetime.now())
    for attempt in range(1, _DEFAULT_ATTEMPTS + 1):
        with snapshot_errors(container):
            taken = {s.name for s in await incus.list_instance_snapshots(container)}
        chosen = free_name(base, taken)
        with snapshot_errors(container, chosen):
            try:
                await incus.create_instance_snapshot(container, chosen)
            except ConflictError:
                # Taken meanwhile (another snapshot of the same second): take the next free one.
                if attempt < _DEFAULT_ATTEMPTS:
                    continue
                raise
        return chosen
    raise AssertionError("unreachable")  # the last attempt returns or raises


async def delete_snapshot(incus: IncusClient, container: str, name: str) -> None:
    check_existing_name(name)
    await _container(incus, container)
    with snapshot_errors(container, name):
        await incus.delete_instance_snapshot(container, name)


async def restore_snapshot(
    incus: IncusClient,
    container: str,
    name: str,
    *,
    saver: SessionSaver,
    grace_s: int,
    emit: Emit = ignore,
) -> Restored:
    """Restore `container` to snapshot `name`; a running container runs again afterwards (see the
    module's docstring). Raises CoiError when the session data could not be saved (nothing was
    changed then) or a step failed."""
    check_existing_name(name)
    instance = await _container(incus, container)
    with snapshot_errors(container, name):
        await incus.get_instance_snapshot(container, name)

    if instance.status.lower() == "stopped":
        _step(emit, container, RESTORING, name)
        try:
            with snapshot_errors(container, name), anyio.fail_after(RESTORE_S):
                await incus.restore_instance_snapshot(container, name)
        except TimeoutError:
            raise _timed_out(container, RESTORE_S) from None
        return Restored(container=container, snapshot=name, restarted=False)
    if instance.ephemeral:
        raise CoiError(
            f"container '{container}' is ephemeral: stopping it for the restore would delete it",
            hint=f"make it persistent first with 'coi persist {container}'",
        )
    session_dir = None
    if session_of(instance, saver.config) is not None:
        _step(emit, container, SAVING)
        saved = await saver.save(incus, instance)
        if saved.session_dir is None:
            _step(emit, container, NO_SESSION_DATA, saver.tool.config_dir)
        else:
            session_dir = str(saved.session_dir)
            _step(emit, container, SAVED, session_dir)
    bound = grace_s + ops.GRACE_SLACK_S + RESTORE_S + START_S
    try:
        with anyio.CancelScope(shield=True), anyio.fail_after(bound):
            await _stop_restore_start(incus, container, name, grace_s=grace_s, emit=emit)
    except TimeoutError:
        raise _timed_out(container, bound) from None
    return Restored(container=container, snapshot=name, restarted=True, session_dir=session_dir)


def _timed_out(container: str, bound_s: float) -> CoiError:
    return CoiError(
        f"restoring {container} did not finish within {bound_s:g}s",
        hint=f"see 'coi container running {container}'",
    )


def _step(emit: Emit, container: str, step: str, detail: str = "") -> None:
    emit(StepStarted(item=container, step=step, detail=detail))


async def _stop_restore_start(
    incus: IncusClient, container: str, name: str, *, grace_s: int, emit: Emit
) -> None:
    # Marked, so the session's own coi (a terminal attached to it) keeps the stopped container;
    # the restore brings back the snapshot's config, so it is marked again until it runs.
    await _mark_restoring(incus, container, restoring=True)
    _step(emit, container, STOPPING, str(grace_s))
    if not await ops.graceful_stop(incus, container, grace_s=grace_s) and await ops.is_running(
        incus, container
    ):
        _step(emit, container, FORCE_STOPPING)
        await ops.force_stop(incus, container)
    _step(emit, container, RESTORING, name)
    try:
        with snapshot_errors(container, name):
            await incus.restore_instance_snapshot(container, name)
    except CoiError:
        # Leave it as it was found: running (on the filesystem it had).
        with contextlib.suppress(CoiError):
            await incus.start_instance(container)
        with contextlib.suppress(CoiError):
            await _mark_restoring(incus, container, restoring=False)
        raise
    await _mark_restoring(incus, container, restoring=True)
    _step(emit, container, STARTING)
    try:
        await incus.start_instance(container)
    except CoiError as exc:
        raise CoiError(
            f"restored snapshot '{name}' of container '{container}', but could not start it again: {exc}",
            hint=f"coi container start {container}",
        ) from exc
    finally:
        with contextlib.suppress(CoiError):
            await _mark_restoring(incus, container, restoring=False)


async def _mark_restoring(incus: IncusClient, container: str, *, restoring: bool) -> None:
    # incusd drops a key set to "".
    await incus.update_instance(container, InstancePatch(config={KEY_RESTORING: "true" if restoring else ""}))
