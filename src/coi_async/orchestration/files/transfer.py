"""`coi file push/pull`: copy files and directory trees between the host and a container.

Single files travel through incusd's files API, streamed both ways, with their mode and numeric
owner. Directories travel as one tar stream over exec (`IncusClient.push_directory` and
`pull_directory`, whose safety rules are documented in `coi_async.incus.files` and
`coi_async.untar`): a pull never writes outside its local target, skips and names what would
escape it or is no plain file, directory or link, drops set-id bits, and is bounded by the
config's `[limits]`. A pull into `DIR/` lands in `DIR/<name>`, never in place of `DIR` itself.
A pulled single path that is a symbolic link is resolved *inside the container*, like `cp`
does, never on the host. This module only decides what goes where and what to tell the user.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from coi_async.config.model import Limits
from coi_async.errors import ArchiveLimitError, CoiError, InstanceNotFoundError, NotFoundError, UsageError
from coi_async.incus import FileInfo, IncusClient
from coi_async.orchestration.containers.commands import container_errors
from coi_async.orchestration.files.limits import copy_caps, limit_note

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
        return await incus.lookup_file(remote.container, remote.path)


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
            if isinstance(exc, InstanceNotFoundError):
                raise
            parent = posixpath.dirname(target.rstrip("/")) or "/"
            raise CoiError(f"cannot write {remote.container}:{target}: {parent} does not exist") from exc
    return Transfer("file", str(local), f"{remote.container}:{target}")


async def _push_tree(incus: IncusClient, local: Path, remote: Remote) -> None:
    with container_errors(remote.container):
        await incus.push_directory(remote.container, local, remote.path)


# --- pull --------------------------------------------------------------------------------------


async def pull(
    incus: IncusClient,
    remote: Remote,
    local: Path,
    *,
    into: bool = False,
    recursive: bool,
    limits: Limits | None = None,
) -> Transfer:
    """Copy a file or a directory tree from the container to `local`.

    As in the reference, a directory is copied whether or not `recursive` is given, and replaces
    whatever `local` was. A file replaces a file at `local`, or lands inside `local` when it is a
    directory or `into` is set (the argument ended in `/`, which Path drops); the reference would
    delete that directory. A tree is bounded by `limits` (else the defaults).
    """
    del recursive  # both modes pull trees, as the reference does
    path, info = await _resolve(incus, remote)
    if info.type == "directory":
        target = local / _landing_name(remote, path) if into else local
        skipped = await _pull_tree(incus, Remote(remote.container, path), target, limits or Limits())
        return Transfer("directory", str(remote), str(target), skipped)
    target = local
    if into or (await anyio.Path(local).is_dir() and not await anyio.Path(local).is_symlink()):
        target = local / posixpath.basename(path)
    await _pull_file(incus, Remote(remote.container, path), target)
    return Transfer("file", str(remote), str(target))


def _landing_name(remote: Remote, path: str) -> str:
    """The name a directory pulled into `DIR/` gets there: its own (after links). `/` has none,
    and must not land in place of `DIR` itself."""
    name = posixpath.basename(path.rstrip("/"))
    if name in ("", ".", ".."):
        raise UsageError(
            f"{remote} is the container's root directory, which has no name to land under; "
            "give the local directory to copy it to without a trailing /"
        )
    return name


async def _resolve(incus: IncusClient, remote: Remote) -> tuple[str, FileInfo]:
    """Follow symbolic links inside the container to a file or directory."""
    path = remote.path
    for _ in range(_MAX_LINKS):
        current = Remote(remote.container, path)
        info = await _remote_info(incus, current)
        if info is None:
            raise CoiError(f"{current}: not found")  # incus's own words for it
        if info.type != "symlink":
            return path, info
        with container_errors(remote.container):
            link = await incus.read_link(remote.container, path)
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


async def _pull_tree(incus: IncusClient, remote: Remote, target: Path, limits: Limits) -> list[str]:
    parent = target.parent
    if not await anyio.Path(parent).is_dir():
        raise CoiError(f"cannot write {target}: {parent} is not a directory")
    with container_errors(remote.container):
        try:
            return await incus.pull_directory(
                remote.container, remote.path, target, caps=copy_caps(limits), keep_owner=True
            )
        except ArchiveLimitError as exc:
            raise ArchiveLimitError(f"{exc}{limit_note(exc)}", cap=exc.cap, hint=exc.hint) from exc
