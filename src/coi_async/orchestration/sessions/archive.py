"""Save a session's tool state (e.g. `~/.claude`) out of its container, and restore it into one.

Saving never destroys the previous good copy: the new copy is pulled into a staging directory
beside the target (`<session>/.claude.new-<random>`) and swapped in with one atomic
`renameat2(RENAME_EXCHANGE)`; only then is the old copy removed. Where the kernel or libc lacks
the exchange, the old copy is first renamed aside and put back by `recover_directory` if the
process dies between the two renames.

How the data travels depends on the container's state:
- running: one `tar` over exec each way (fast, keeps relative symlinks that stay inside);
- stopped: incusd's files API, which reaches a stopped container's filesystem without starting
  it. Every file and directory comes across with its mode; symbolic links are left out (the
  files API shows a link's resolved target, not the link) and reported as skipped.

Either way the container wrote what comes out, so the copy is bounded by the caller's `Caps`
(entries, bytes of one file, bytes in all; see `coi_async.untar`), and past one the save fails
with the previous copy kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import anyio
import anyio.to_thread
import msgspec

from coi_async.errors import ConflictError, NotFoundError, coi_error
from coi_async.hostfs import make_private_dir
from coi_async.incus import IncusClient
from coi_async.untar import PRIVATE_MODE_MASK, Budget, Caps

# How many file requests a files-API walk keeps in flight.
_WALK_PARALLEL = 8
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class SaveOutcome(msgspec.Struct, frozen=True, kw_only=True):
    saved: bool  # a fresh copy is now in place
    missing: bool = False  # the container has no such directory; the old copy (if any) is kept
    method: str = ""  # "exec" (tar over exec) or "files" (files API, stopped container)
    skipped: tuple[str, ...] = ()  # entries left out: symlinks, names that would escape


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False if the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    return bool(renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0)


def recover_directory(target: Path) -> None:
    """Undo a swap that was interrupted between its two renames, and drop stale staging dirs."""
    parent = target.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f"{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        os.rename(olds.pop(), target)
    # Also what a pull left half-unpacked beside a staging dir (`.<name>.new-*.coi-pull`).
    leftovers = [*parent.glob(f"{target.name}.new-*"), *parent.glob(f".{target.name}.new-*.coi-pull")]
    for stale in [*olds, *leftovers]:
        shutil.rmtree(stale, ignore_errors=True)


def install_directory(staging: Path, target: Path) -> None:
    """Put `staging` in place of `target`, which is at every moment either old or new, never gone."""
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # it holds the old copy now
        return
    aside = target.with_name(f"{target.name}.old-{secrets.token_hex(4)}")
    os.rename(target, aside)
    os.rename(staging, target)
    shutil.rmtree(aside, ignore_errors=True)


def _safe_entry(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


class _Kind(NamedTuple):
    kind: str  # "directory", "file", or anything else (left out)
    mode: int


class _TreeCopy:
    """A files-API copy of a directory tree, one side local and the other in the container.

    Directories are made before their entries; entries are looked at and copied concurrently,
    at most `_WALK_PARALLEL` requests in flight; anything but a file or directory (a symlink, a
    device, a name that could escape) is left out and listed in `skipped`.
    """

    def __init__(
        self,
        *,
        names: Callable[[str], Awaitable[list[str]]],
        kind: Callable[[str], Awaitable[_Kind]],
        make_directory: Callable[[str, int], Awaitable[None]],
        copy_file: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._names = names
        self._kind = kind
        self._make_directory = make_directory
        self._copy_file = copy_file
        self._limiter = anyio.CapacityLimiter(_WALK_PARALLEL)
        self.skipped: list[str] = []

    async def copy(self, source: str, target: str, mode: int, rel: str = "") -> None:
        async with self._limiter:
            await self._make_directory(target, mode)
            names = await self._names(source)

        async def one(name: str) -> None:
            shown = f"{rel}{name}"
            if not _safe_entry(name):
                self.skipped.append(shown)
                return
            from_, to = f"{source}/{name}", f"{target}/{name}"
            async with self._limiter:
                found = await self._kind(from_)
            if found.kind == "directory":
                await self.copy(from_, to, found.mode, f"{shown}/")
            elif found.kind == "file":
                async with self._limiter:
                    await self._copy_file(from_, to)
            else:
                self.skipped.append(shown)

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)


async def _pull_tree(
    incus: IncusClient, container: str, remote: str, local: Path, *, caps: Caps
) -> list[str]:
    budget = Budget(caps)  # the same caps as a tar stream's: entries, one file, all files

    async def names(directory: str) -> list[str]:
        return await incus.list_directory(container, directory)

    async def kind(path: str) -> _Kind:
        budget.take_member(path)
        info = await incus.stat_file(container, path)
        return _Kind(info.type, info.mode)

    async def make_directory(path: str, mode: int) -> None:
        # The owner's bits only, whatever the container says: the copy goes into ~/.coi.
        del mode
        await anyio.Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
        await anyio.Path(path).chmod(0o700)

    async def copy_file(source: str, target: str) -> None:
        await incus.pull_file_to(container, source, Path(target), budget=budget, mode_mask=PRIVATE_MODE_MASK)

    walk = _TreeCopy(names=names, kind=kind, make_directory=make_directory, copy_file=copy_file)
    try:
        await walk.copy(remote, str(local), 0o700)
    except Exception as exc:
        # The first of its errors, not the groups of the walk's task groups: callers branch on it.
        error = coi_error(exc)
        if error is None:
            raise
        raise error from exc
    return walk.skipped


def _local_kind(path: str) -> _Kind:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        return _Kind("directory", st.st_mode)
    return _Kind("file" if stat.S_ISREG(st.st_mode) else "other", st.st_mode)


async def _push_tree(
    incus: IncusClient, container: str, local: Path, remote: str, *, uid: int, gid: int
) -> None:
    async def names(directory: str) -> list[str]:
        return await anyio.to_thread.run_sync(os.listdir, directory)

    async def kind(path: str) -> _Kind:
        return await anyio.to_thread.run_sync(_local_kind, path)

    async def make_directory(path: str, mode: int) -> None:
        with contextlib.suppress(ConflictError):
            await incus.make_directory(container, path, uid=uid, gid=gid, mode=mode & 0o777)

    async def copy_file(source: str, target: str) -> None:
        await incus.push_file_from(container, target, Path(source), uid=uid, gid=gid)

    walk = _TreeCopy(names=names, kind=kind, make_directory=make_directory, copy_file=copy_file)
    await walk.copy(str(local), remote, (await anyio.Path(local).stat()).st_mode)


class StatePlace(msgspec.Struct, frozen=True):
    """Where a session's tool state lives: `<home>/<config_dir>` in `container`."""

    container: str
    home: str
    config_dir: str = ".claude"

    @property
    def path(self) -> str:
        return f"{self.home.rstrip('/')}/{self.config_dir}"


async def save_session_data(
    incus: IncusClient, place: StatePlace, session_dir: Path, *, caps: Caps, running: bool | None = None
) -> SaveOutcome:
    """Copy `<home>/<config_dir>` out of the container into `<session_dir>/<config_dir>`.

    Works on running and stopped containers (`running` saves a state lookup when known). If
    the container has no such directory, nothing changes on disk and `missing` is set. Any
    failure or cancellation leaves the previous copy as it was: ArchiveError when the data is
    refused (ArchiveLimitError past one of `caps`). NotFoundError if the container does not
    exist.
    """
    container, config_dir, remote = place.container, place.config_dir, place.path
    target = session_dir / config_dir
    if running is None:
        running = (await incus.get_instance(container)).running
    try:
        # A GET, not a HEAD: incusd answers a HEAD for a missing path with an empty 404.
        await incus.list_directory(container, remote)
    except NotFoundError:
        return SaveOutcome(saved=False, missing=True)

    # 0700 from the start, parents too (a nested config_dir's): the copy holds credentials.
    await anyio.to_thread.run_sync(make_private_dir, target.parent)
    await anyio.to_thread.run_sync(recover_directory, target)
    staging = session_dir / f"{config_dir}.new-{secrets.token_hex(4)}"
    skipped: list[str] = []
    try:
        if running:
            skipped = await incus.pull_directory(
                container, remote, staging, caps=caps, mode_mask=PRIVATE_MODE_MASK
            )
            method = "exec"
        else:
            skipped = await _pull_tree(incus, container, remote, staging, caps=caps)
            method = "files"
        await anyio.Path(staging).chmod(0o700)
        # Not cancellable: once the copy is complete, putting it in place takes two syscalls.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(install_directory, staging, target)
    except BaseException:
        with anyio.move_on_after(30, shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(staging, ignore_errors=True))
        raise
    return SaveOutcome(saved=True, method=method, skipped=tuple(sorted(skipped)))


async def restore_session_data(
    incus: IncusClient, place: StatePlace, session_dir: Path, uid: int, *, running: bool | None = None
) -> bool:
    """Copy `<session_dir>/<config_dir>` into the container's `<home>/<config_dir>`, owned by
    uid:uid.

    Existing files there are overwritten, others kept. Works before the container's first start
    too (files API), so the tool never starts without its state. False if nothing was saved.
    """
    container, remote, gid = place.container, place.path, uid
    local = session_dir / place.config_dir
    if not await anyio.Path(local).is_dir():
        return False
    if running is None:
        running = (await incus.get_instance(container)).running
    if "/" in place.config_dir:
        await make_state_dir(incus, place, uid, parents_only=True)
    if running:
        await incus.push_directory(container, local, remote, uid=uid, gid=gid)
        # tar made the directory itself as root; the tool must own it.
        await incus.exec(container, ["chown", f"{uid}:{gid}", remote])
    else:
        await _push_tree(incus, container, local, remote, uid=uid, gid=gid)
    return True


async def make_state_dir(
    incus: IncusClient, place: StatePlace, uid: int, *, parents_only: bool = False
) -> None:
    """Make `<home>/<config_dir>` and its parents below the home (`~/.local/share/opencode`),
    owned by uid:uid, so that the tool can write beside it too; existing ones are kept. Files
    API only: works before the container's first start."""
    parts = place.config_dir.split("/")
    home = place.home.rstrip("/")
    for depth in range(1, len(parts) + (0 if parents_only else 1)):
        path = f"{home}/{'/'.join(parts[:depth])}"
        await incus.make_directory(place.container, path, uid=uid, gid=uid, mode=0o755)
