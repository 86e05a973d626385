"""`coi file push/pull`: copy files and directory trees between the host and a container.

Single files travel through incusd's files API, streamed both ways, with their mode and numeric
owner. Directories travel as one tar stream over exec, packed with numeric owners so ids survive
even where user names differ between host and container.

A pull never writes outside its local target: it unpacks into a fresh directory beside the target
and renames it into place; entries whose path or link target would leave the tree (absolute
links, `..`, device nodes) are skipped and reported, and set-id bits are dropped, so a container
cannot plant a set-uid binary on the host. A pulled single path that is a symbolic link is
resolved *inside the container*, like `cp` does, never on the host.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
import anyio.to_thread

from coi_async.errors import CoiError, NotFoundError, UsageError
from coi_async.incus import FileInfo, IncusClient
from coi_async.incus.files import file_info
from coi_async.incus.paths import instance_path
from coi_async.orchestration.containers.commands import container_errors

_CHUNK = 256 * 1024
# Symbolic links followed inside the container before giving up (the kernel's own limit).
_MAX_LINKS = 40


@dataclass(frozen=True, slots=True)
class Remote:
    """`CONTAINER:PATH` on the command line."""

    container: str
    path: str

    def __str__(self) -> str:
        return f"{self.container}:{self.path}"


@dataclass(frozen=True, slots=True)
class Transfer:
    """What a push or pull did: "file" or "directory", where it landed, and what it left out."""

    kind: str
    source: str
    target: str
    skipped: list[str] = field(default_factory=list)


def parse_remote(spec: str, *, role: str) -> Remote:
    """`CONTAINER:PATH` with an absolute PATH; anything else is a usage error."""
    container, sep, path = spec.partition(":")
    if not sep or not container or not path:
        raise UsageError(f"{role} must be in format 'container:path'")
    if not path.startswith("/"):
        raise UsageError(f"{role} path must be absolute: '{path}'")
    return Remote(container, path)


async def _remote_info(incus: IncusClient, remote: Remote) -> FileInfo | None:
    """The type, owner and mode of a path in the container; None if it does not exist."""
    with container_errors(remote.container):
        try:
            # A GET whose body we do not read: incusd's HEAD answers errors without a body.
            async with incus.transport.download(
                f"{instance_path(remote.container)}/files",
                params={"path": remote.path, "project": incus.project},
            ) as (headers, _chunks):
                return file_info(headers)
        except NotFoundError as exc:
            if "Instance not found" in str(exc):
                raise
            return None


# --- push --------------------------------------------------------------------------------------


async def push(incus: IncusClient, local: Path, remote: Remote, *, recursive: bool) -> Transfer:
    """Copy a local file (or, with `recursive`, a directory) to the container.

    A file lands at PATH, or inside it when PATH ends in `/` or is a directory. A directory's
    contents land in PATH (created if missing, merged if present), or in PATH/<name> when PATH
    ends in `/`.
    """
    source = anyio.Path(local)
    if not await source.exists():
        raise CoiError(f"source does not exist: {local}")
    is_dir = await source.is_dir()
    if is_dir and not recursive:
        raise UsageError("source is a directory, use -r flag")
    target = remote.path
    if target.endswith("/"):
        target = posixpath.join(target, local.name)
    if is_dir:
        await _push_tree(incus, local, Remote(remote.container, target))
        return Transfer("directory", str(local), f"{remote.container}:{target}")
    info = await _remote_info(incus, Remote(remote.container, target))
    if info is not None and info.type == "directory":
        target = posixpath.join(target, local.name)
    st = await source.stat()
    with container_errors(remote.container):
        try:
            await incus.push_file_from(
                remote.container,
                target,
                local,
                uid=st.st_uid,
                gid=st.st_gid,
                mode=stat.S_IMODE(st.st_mode),
            )
        except NotFoundError as exc:
            if "Instance not found" in str(exc):
                raise
            parent = posixpath.dirname(target.rstrip("/")) or "/"
            raise CoiError(f"cannot write {remote.container}:{target}: {parent} does not exist") from exc
    return Transfer("file", str(local), f"{remote.container}:{target}")


async def _push_tree(incus: IncusClient, local: Path, remote: Remote) -> None:
    with tempfile.TemporaryFile() as spool:
        await anyio.to_thread.run_sync(_pack, local, spool)
        spool.seek(0)
        errors: list[bytes] = []

        async def keep(data: bytes) -> None:
            errors.append(data)

        # One exec: create the target, then unpack as root, which keeps owners and modes.
        script = 'mkdir -p -- "$1" && exec tar -x -f - -C "$1"'
        with container_errors(remote.container):
            code = await incus.exec_stream(
                remote.container,
                ["sh", "-c", script, "sh", remote.path],
                stdin=_read_chunks(spool),
                on_stderr=keep,
            )
    if code != 0:
        message = b"".join(errors).decode(errors="replace").strip() or f"tar exited with {code}"
        raise CoiError(f"copying {local} to {remote} failed: {message}")


def _pack(root: Path, out: IO[bytes]) -> None:
    def numeric(info: tarfile.TarInfo) -> tarfile.TarInfo:
        # Empty names make tar in the container use the numeric ids.
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(root)):
            tar.add(root / entry, arcname=entry, filter=numeric)


async def _read_chunks(fh: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(fh.read, _CHUNK):
        yield chunk


# --- pull --------------------------------------------------------------------------------------


async def pull(
    incus: IncusClient, remote: Remote, local: Path, *, into: bool = False, recursive: bool
) -> Transfer:
    """Copy a file or a directory tree from the container to `local`.

    As in the reference, a directory is copied whether or not `recursive` is given, and replaces
    whatever `local` was. A file replaces a file at `local`, or lands inside `local` when it is a
    directory or `into` is set (the argument ended in `/`, which Path drops); the reference would
    delete that directory.
    """
    del recursive  # both modes pull trees, as the reference does
    path, info = await _resolve(incus, remote)
    if info.type == "directory":
        target = local / posixpath.basename(path.rstrip("/")) if into else local
        skipped = await _pull_tree(incus, Remote(remote.container, path), target)
        return Transfer("directory", str(remote), str(target), skipped)
    target = local
    if into or (await anyio.Path(local).is_dir() and not await anyio.Path(local).is_symlink()):
        target = local / posixpath.basename(path)
    await _pull_file(incus, Remote(remote.container, path), target)
    return Transfer("file", str(remote), str(target))


async def _resolve(incus: IncusClient, remote: Remote) -> tuple[str, FileInfo]:
    """Follow symbolic links inside the container to a file or directory."""
    path = remote.path
    for _ in range(_MAX_LINKS):
        current = Remote(remote.container, path)
        info = await _remote_info(incus, current)
        if info is None:
            raise CoiError(f"{current} does not exist")
        if info.type != "symlink":
            return path, info
        with container_errors(remote.container):
            link = (await incus.pull_file(remote.container, path)).data.decode(errors="surrogateescape")
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), link))
    raise CoiError(f"{remote}: too many levels of symbolic links")


async def _pull_file(incus: IncusClient, remote: Remote, target: Path) -> None:
    if not await anyio.Path(target.parent).is_dir():
        raise CoiError(f"cannot write {target}: {target.parent} is not a directory")
    with container_errors(remote.container):
        info = await incus.pull_file_to(remote.container, remote.path, target)
    await anyio.to_thread.run_sync(_settle, target, info)


def _settle(target: Path, info: FileInfo) -> None:
    # The owner only when we may give files away (pull_file_to set the mode, without set-id bits).
    if os.geteuid() == 0:
        os.chown(target, info.uid, info.gid)


async def _pull_tree(incus: IncusClient, remote: Remote, target: Path) -> list[str]:
    parent = target.parent
    if not await anyio.Path(parent).is_dir():
        raise CoiError(f"cannot write {target}: {parent} is not a directory")
    with tempfile.TemporaryFile() as spool:
        errors: list[bytes] = []

        async def spill(data: bytes) -> None:
            await anyio.to_thread.run_sync(spool.write, data)

        async def keep(data: bytes) -> None:
            errors.append(data)

        with container_errors(remote.container):
            code = await incus.exec_stream(
                remote.container,
                ["tar", "-c", "-f", "-", "-C", remote.path, "."],
                on_stdout=spill,
                on_stderr=keep,
            )
        if code != 0:
            message = b"".join(errors).decode(errors="replace").strip() or f"tar exited with {code}"
            raise CoiError(f"cannot read {remote}: {message}")
        spool.seek(0)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".coi-pull", dir=parent))
        try:
            skipped = await anyio.to_thread.run_sync(_unpack, spool, staging)
            await anyio.to_thread.run_sync(_replace, staging, target)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, staging)
            raise
    return skipped


def _unpack(spool: IO[bytes], dest: Path) -> list[str]:
    """Unpack a tar stream into `dest`, keeping modes and owners, skipping what would escape."""
    skipped: list[str] = []

    def safe(member: tarfile.TarInfo, where: str) -> tarfile.TarInfo | None:
        try:
            checked = tarfile.data_filter(member, where)
        except tarfile.FilterError:
            skipped.append(member.name)
            return None
        # data_filter's verdict on the path and link, but the member's own mode and owner.
        mode = None if member.mode is None else member.mode & ~(stat.S_ISUID | stat.S_ISGID)
        return checked.replace(mode=mode, uid=member.uid, gid=member.gid, uname="", gname="", deep=False)

    with tarfile.open(fileobj=spool, mode="r") as tar:
        tar.extractall(dest, filter=safe, numeric_owner=True)
    return skipped


def _replace(staging: Path, target: Path) -> None:
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    staging.rename(target)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
