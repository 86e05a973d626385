"""The host side of tar over exec: tar's output spooled within a copy's caps, the last lines of
its errors, a local directory packed for the instance, and a pulled copy put in place.

Pure local work (files, threads); the exec itself is `files.FilesApi`'s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from coi_async.errors import ArchiveError, ArchiveLimitError
from coi_async.untar import Budget, Caps

_T = TypeVar("_T")

_CHUNK = 256 * 1024
# How much of a command's error output is kept for the message: its last few lines.
_STDERR_MAX = 4096
_STDERR_LINES = 5


class Spool:
    """tar's output in a local file, refused once it outgrows what `caps` allow."""

    def __init__(self, fh: IO[bytes], caps: Caps) -> None:
        self._fh = fh
        self._budget = Budget(caps)
        self._size = 0
        self.error: ArchiveError | None = None

    async def add(self, data: bytes) -> None:
        self._size += len(data)
        try:
            self._budget.check_stream(self._size)
            await anyio.to_thread.run_sync(self._fh.write, data)
        except ArchiveError as exc:
            self.error = exc
            raise
        except OSError as exc:
            self.error = ArchiveError(f"cannot keep the tar stream: {exc.strerror}")
            raise self.error from exc


def refusal_at(exc: ArchiveError, where: str) -> ArchiveError:
    """The same refusal, saying which copy it was."""
    message = f"cannot copy {where}: {exc}"
    if isinstance(exc, ArchiveLimitError):
        return ArchiveLimitError(message, cap=exc.cap, hint=exc.hint)
    return ArchiveError(message, hint=exc.hint)


async def run_stoppable(work: Callable[[threading.Event], _T]) -> _T:
    """`work(stop)` in a worker thread; cancelling this sets `stop`, so that a long unpack ends
    soon (work must give up when it sees it) instead of holding up the caller's deadline."""
    stop = threading.Event()
    result: list[_T] = []
    failure: list[Exception] = []

    async def run() -> None:
        try:
            result.append(await anyio.to_thread.run_sync(work, stop))
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
            failure.append(exc)
        finally:
            tg.cancel_scope.cancel()

    async def watch() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            stop.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        tg.start_soon(run)
    await anyio.lowlevel.checkpoint_if_cancelled()
    if failure:
        raise failure[0]
    return result[0]


class StderrTail:
    """The last few lines of a command's error output (at most a few KiB of it is held)."""

    def __init__(self, limit: int = _STDERR_MAX) -> None:
        self._data = bytearray()
        self._limit = limit

    async def add(self, data: bytes) -> None:
        self._data += data[-self._limit :]
        del self._data[: -self._limit]

    def text(self) -> str:
        lines = bytes(self._data).decode(errors="replace").strip().splitlines()
        # One line: it ends up in an error message.
        return "; ".join(line.strip() for line in lines[-_STDERR_LINES:])


async def read_chunks(fh: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(fh.read, _CHUNK):
        yield chunk


def pack(root: Path, out: IO[bytes], uid: int | None, gid: int | None) -> None:
    """The entries of `root` as a tar stream into `out`, with numeric owners (`uid`/`gid` if given)."""

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        # Empty names make tar in the instance use the numeric ids.
        info.uname = info.gname = ""
        if uid is not None:
            info.uid = uid
        if gid is not None:
            info.gid = gid
        return info

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(root)):
            tar.add(root / entry, arcname=entry, filter=owner)


def replace_with(staging: Path, target: Path) -> None:
    """Put `staging` where `target` is, whatever `target` was (a link there is removed, not followed)."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    staging.rename(target)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
