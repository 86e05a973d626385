"""Making the pool up (`coi pool fill`, and the detached refill a launch starts), and emptying it.

One filler at a time per incusd, project and prefix: each holds a lock file while it counts and
makes members, so two refills started by two launches never make more than the size between
them (the second counts after the first is done). Under the lock no other filler is making a
member, so any incomplete member found is a dead filler's leftover, removed; so are members of
an image the alias no longer points to, and members beyond the size. A member is made stopped
in one create and marked ready only after it, so no launch takes one half made; a failed or
cancelled make removes its member.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio
import msgspec

from coi_async.errors import CoiError, IncusApiError
from coi_async.incus import IncusClient, resolve_socket
from coi_async.incus.models import InstancePatch, InstanceSource, InstancesPost
from coi_async.orchestration.containers import ops
from coi_async.orchestration.events import Emit, ignore, note
from coi_async.orchestration.flock import wait_for_flock
from coi_async.orchestration.network.plan import nic_names
from coi_async.orchestration.pool.members import (
    KEY_POOL,
    KEY_POOL_ALIAS,
    KEY_POOL_IMAGE,
    KEY_POOL_READY,
    Member,
    as_member,
    list_members,
    member_name,
)
from coi_async.orchestration.runner import ItemContext, run_bulk

# Making a member of a large image on `dir` copies it all (about 15 s for the 1.3 GB coi image).
MAKE_S = 1800.0
# Members made at once: on `dir` each is disk-bound, and a third would only share the disk.
MAKE_PARALLEL = 2
_LOCK_POLL_S = 0.2
# A refill waits this long before it makes anything: the launch that asked for it is still
# setting its session up, and on `dir` a make takes the disk for seconds.
REFILL_DELAY_S = 3.0


def pool_dir(env: Mapping[str, str] | None = None) -> Path:
    """This user's directory for the pool's locks and the detached refills' log, per incusd:
    `$XDG_RUNTIME_DIR/coi-pool-<hash>` (or under /tmp/coi-<uid>), made 0700."""
    environ = os.environ if env is None else env
    tag = hashlib.sha256(str(resolve_socket(environ).socket).encode()).hexdigest()[:8]
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    base = Path(runtime) if os.path.isabs(runtime) else Path(f"/tmp/coi-{os.geteuid()}")
    path = base / f"coi-pool-{tag}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        if path.lstat().st_uid != os.geteuid() or not path.is_dir() or path.is_symlink():
            raise CoiError(f"the pool directory {path} is not a directory of this user")
    except OSError as exc:
        raise CoiError(f"cannot make the pool directory {path}: {exc.strerror or exc}") from exc
    return path


@contextlib.asynccontextmanager
async def fill_lock(project: str, prefix: str) -> AsyncIterator[None]:
    """Held by one filler (or drain) of the project's pool at a time; waits for the holder."""
    path = pool_dir() / f"{hashlib.sha256(f'{project}/{prefix}'.encode()).hexdigest()[:16]}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        await wait_for_flock(fd, poll_s=_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


def refill_command(*, project: str, image: str, size: int) -> list[str]:
    return [
        sys.executable, "-m", "coi_async", "--project", project,
        "pool", "fill", "--image", image, "--size", str(size), "--quiet", "--delay", str(REFILL_DELAY_S),
    ]  # fmt: skip


def spawn_refill(*, project: str, image: str, size: int, prefix: str, cwd: str) -> None:
    """Start `coi pool fill` detached (nobody's child, its output in the pool directory's log):
    the launch that asks returns at once. OSError when it cannot be started."""
    log = pool_dir() / "fill.log"
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > 1 << 20:
            os.replace(log, f"{log}.1")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        subprocess.run(
            ["/bin/sh", "-c", '"$@" &', "sh", *refill_command(project=project, image=image, size=size)],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            cwd=cwd,
            env={**os.environ, "COI_CONTAINER_PREFIX": prefix},
            start_new_session=True,
            close_fds=True,
            check=True,
            timeout=10,
        )
    except subprocess.SubprocessError as exc:
        raise OSError(f"cannot start the pool refill: {exc}") from exc
    finally:
        os.close(fd)


class FillResult(msgspec.Struct, frozen=True, kw_only=True):
    image: str
    fingerprint: str
    size: int
    made: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()  # "name: error"
    ready: int = 0  # members of the image ready now


def _stale(member: Member, image: str, fingerprint: str) -> bool:
    """Incomplete (a dead filler's; no filler runs beside the lock holder), or of an older build
    of this image."""
    return not member.ready or (member.image == image and member.fingerprint != fingerprint)


async def _remove_all(incus: IncusClient, names: list[str], emit: Emit) -> list[str]:
    async def remove(ctx: ItemContext) -> None:
        await ops.remove(incus, ctx.name)

    if not names:
        return []
    report = await run_bulk(names, remove, limit=8, per_item_s=ops.REMOVE_S, emit=emit)
    return [r.item for r in report.succeeded]


async def fill(incus: IncusClient, *, image: str, size: int, prefix: str, emit: Emit = ignore) -> FillResult:
    """Make the pool of `image` up to `size` ready members (and no more). CoiError for an image
    that does not exist."""
    found = await incus.find_image(image)
    if found is None:
        raise CoiError(f"image '{image}' not found - run 'coi build' first")
    fingerprint = found.fingerprint
    try:
        masks = {nic: {"type": "none"} for nic in nic_names((await incus.get_profile("default")).devices)}
    except IncusApiError:
        masks = {}  # a profile this user may not read: the session's own masks come at the take
    async with fill_lock(incus.project, prefix):
        members = [as_member(i) for i in await list_members(incus, prefix)]
        stale = [m.name for m in members if _stale(m, image, fingerprint)]
        ready = [m.name for m in members if m.ready and m.fingerprint == fingerprint]
        surplus = ready[size:]  # the size was lowered
        removed = await _remove_all(incus, [*stale, *surplus], emit)
        wanted = [member_name(prefix, fingerprint) for _ in range(size - len(ready))]

        async def make(ctx: ItemContext) -> None:
            request = InstancesPost(
                name=ctx.name,
                source=InstanceSource(type="image", fingerprint=fingerprint),
                start=False,
                config={KEY_POOL: "true", KEY_POOL_IMAGE: fingerprint, KEY_POOL_ALIAS: image},
                devices=masks,
            )
            try:
                await incus.create_instance(request)
                await incus.update_instance(ctx.name, InstancePatch(config={KEY_POOL_READY: "true"}))
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await ops.remove_quietly(incus, ctx.name)
                raise
            note(emit, "pool.made", ctx.name, image=image)

        made: list[str] = []
        failed: list[str] = []
        if wanted:
            report = await run_bulk(wanted, make, limit=MAKE_PARALLEL, per_item_s=MAKE_S, emit=emit)
            made = [r.item for r in report.succeeded]
            failed = [f"{r.item}: {r.error}" for r in report.results if not r.ok]
    return FillResult(
        image=image,
        fingerprint=fingerprint,
        size=size,
        made=tuple(made),
        removed=tuple(removed),
        failed=tuple(failed),
        ready=min(len(ready), size) + len(made),
    )


async def drain(incus: IncusClient, *, prefix: str, emit: Emit = ignore) -> list[str]:
    """Remove every member of this prefix's pool in the project; the names removed."""
    async with fill_lock(incus.project, prefix):
        members = await list_members(incus, prefix)
        return await _remove_all(incus, [m.name for m in members], emit)
