"""Files in instances: single files through the files API, whole directories as tar over exec.

incusd reads only `X-Incus-*` headers for ownership and mode; anything else is silently ignored.

This is the one tar-over-exec implementation. Directories are packed with numeric owners (empty
user and group names), so ids survive where names differ between host and instance. A pull
trusts nothing in the instance:
- it unpacks into a fresh directory beside the local target and renames that into place, so it
  never writes outside the target and never leaves a half-made copy;
- entries whose path or link target would leave the tree (absolute names or links, `..`) and
  special files (devices, fifos) are skipped and named; tarfile's "data" filter decides;
- modes lose set-uid, set-gid and sticky bits and group/other write, so an instance cannot plant
  a set-uid binary on the host; owners are kept only when asked (and only root can keep them);
- at most a few KiB of tar's error output is kept.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
import anyio.to_thread

from coi_async.errors import (
    CoiError,
    FileHelperNotReadyError,
    IncusError,
    InstanceNotFoundError,
    NotFoundError,
)
from coi_async.incus.base import decode
from coi_async.incus.exec import ExecApi
from coi_async.incus.paths import instance_path
from coi_async.incus.transport import RawResponse, decode_envelope

_CHUNK = 256 * 1024
_FILES_ATTEMPTS = 10
# How much of a command's error output is kept for the message.
_STDERR_MAX = 4096
# Longer than any link target Linux allows (PATH_MAX).
_LINK_MAX = 4096
# What a pulled mode may keep: no set-uid/set-gid/sticky bits, no group/other write.
_PULL_MODE_MASK = 0o755
_UNPACK_SCRIPT = 'mkdir -p -- "$1" && exec tar -x -f - -C "$1"'


@dataclass(frozen=True, slots=True)
class FileInfo:
    type: str  # "file", "directory" or "symlink"
    uid: int
    gid: int
    mode: int


@dataclass(frozen=True, slots=True)
class FileContent:
    info: FileInfo
    data: bytes


def file_info(headers: Mapping[str, str]) -> FileInfo:
    # Go canonicalises header names ("X-Incus-Uid"): compare them case-blind.
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        return FileInfo(
            type=lowered.get("x-incus-type", "file"),
            uid=int(lowered.get("x-incus-uid", "0")),
            gid=int(lowered.get("x-incus-gid", "0")),
            mode=int(lowered.get("x-incus-mode", "0644"), 8),
        )
    except ValueError as exc:
        raise IncusError(f"unexpected file headers from incusd: {exc}") from exc


def _push_headers(*, uid: int, gid: int, mode: int, kind: str = "file") -> dict[str, str]:
    return {
        "X-Incus-uid": str(uid),
        "X-Incus-gid": str(gid),
        "X-Incus-mode": f"{mode:04o}",
        "X-Incus-type": kind,
        "X-Incus-write": "overwrite",
        "Content-Type": "application/octet-stream",
    }


class FilesApi(ExecApi):
    def _files(self, name: str) -> str:
        return f"{instance_path(name)}/files"

    async def _files_request(
        self,
        method: str,
        name: str,
        path: str,
        *,
        data: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RawResponse:
        """One files-API request, repeated while incusd reports its transient helper failure.

        Under load incusd's per-instance file helper is sometimes not listening yet ("dial unix
        .../forkfile.sock: connect: no such file or directory"); a moment later it is.
        """
        start = data.tell() if data is not None and not isinstance(data, bytes) else 0
        for attempt in range(_FILES_ATTEMPTS):
            try:
                return await self._transport.request_raw(
                    method, self._files(name), params=self._params({"path": path}), data=data, headers=headers
                )
            except FileHelperNotReadyError:
                if attempt == _FILES_ATTEMPTS - 1:
                    raise
            if data is not None and not isinstance(data, bytes):
                data.seek(start)
            await anyio.sleep(min(0.1 * (attempt + 1), 0.5))  # ~3.5 s in all
        raise AssertionError("unreachable")

    async def push_file(
        self,
        name: str,
        path: str,
        data: bytes | IO[bytes],
        *,
        uid: int = 0,
        gid: int = 0,
        mode: int = 0o644,
    ) -> None:
        """Write a file in the instance (bytes, or an open binary file streamed as it is read)."""
        await self._files_request(
            "POST", name, path, data=data, headers=_push_headers(uid=uid, gid=gid, mode=mode)
        )

    async def push_file_from(
        self, name: str, path: str, local: Path, *, uid: int = 0, gid: int = 0, mode: int | None = None
    ) -> None:
        """Stream a local file into the instance; its mode is kept unless one is given."""
        st = await anyio.Path(local).stat()
        with open(local, "rb") as fh:  # noqa: ASYNC230 - aiohttp reads it in a worker thread
            await self.push_file(name, path, fh, uid=uid, gid=gid, mode=mode or (st.st_mode & 0o7777))

    async def make_directory(
        self, name: str, path: str, *, uid: int = 0, gid: int = 0, mode: int = 0o755
    ) -> None:
        await self._files_request(
            "POST", name, path, data=b"", headers=_push_headers(uid=uid, gid=gid, mode=mode, kind="directory")
        )

    async def lookup_file(self, name: str, path: str) -> FileInfo | None:
        """The type, owner and mode of `path` in the instance; None if there is no such path.

        InstanceNotFoundError when the instance itself is missing: a GET whose body is never
        read tells the two apart, where incusd answers a HEAD's errors without a body.
        """
        for attempt in range(_FILES_ATTEMPTS):
            try:
                async with self._transport.download(
                    self._files(name), params=self._params({"path": path})
                ) as (headers, _chunks):
                    return file_info(headers)
            except InstanceNotFoundError:
                raise
            except NotFoundError:
                return None
            except FileHelperNotReadyError:
                if attempt == _FILES_ATTEMPTS - 1:
                    raise
            await anyio.sleep(min(0.1 * (attempt + 1), 0.5))
        raise AssertionError("unreachable")

    async def read_link(self, name: str, path: str) -> str:
        """The target of the symbolic link `path` in the instance (read at most a few KiB)."""
        async with self._transport.download(self._files(name), params=self._params({"path": path})) as (
            headers,
            chunks,
        ):
            info = file_info(headers)
            if info.type != "symlink":
                raise CoiError(f"{path} in {name} is not a symbolic link")
            data = bytearray()
            async for chunk in chunks:
                data += chunk
                if len(data) > _LINK_MAX:
                    raise CoiError(f"{path} in {name}: link target too long")
        return bytes(data).decode(errors="surrogateescape")

    async def stat_file(self, name: str, path: str) -> FileInfo:
        response = await self._files_request("HEAD", name, path)
        return file_info(response.headers)

    async def pull_file(self, name: str, path: str) -> FileContent:
        """Read a file of the instance whole, with its ownership and mode."""
        response = await self._files_request("GET", name, path)
        info = file_info(response.headers)
        if info.type == "directory":
            raise CoiError(f"{path} in {name} is a directory")
        return FileContent(info, response.body)

    async def pull_file_to(self, name: str, path: str, local: Path) -> FileInfo:
        """Stream a file of the instance into a local file (written beside, then renamed)."""
        partial = local.with_name(f".{local.name}.part")
        async with self._transport.download(self._files(name), params=self._params({"path": path})) as (
            headers,
            chunks,
        ):
            info = file_info(headers)
            if info.type == "directory":
                raise CoiError(f"{path} in {name} is a directory")
            try:
                async with await anyio.open_file(partial, "wb") as out:
                    async for chunk in chunks:
                        await out.write(chunk)
                await anyio.Path(partial).chmod(info.mode & 0o777)
                await anyio.Path(partial).rename(local)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.Path(partial).unlink(missing_ok=True)
                raise
        return info

    async def list_directory(self, name: str, path: str) -> list[str]:
        """The entry names of a directory in the instance; works on stopped instances too."""
        response = await self._files_request("GET", name, path)
        envelope = decode_envelope("GET", self._files(name), response.status, response.body)
        if bytes(envelope.metadata).strip() in (b"", b"null"):
            return []  # an empty directory
        return decode(envelope.metadata, list[str], what="directory listing")

    async def delete_file(self, name: str, path: str) -> None:
        await self._files_request("DELETE", name, path)

    async def push_directory(
        self, name: str, local: Path, remote: str, *, uid: int | None = None, gid: int | None = None
    ) -> None:
        """Copy a local directory's contents into `remote` (created if missing, merged if present)
        as one tar stream, unpacked as root so modes and numeric owners (or `uid`/`gid`) stay."""
        if not await anyio.Path(local).is_dir():
            raise CoiError(f"{local} is not a directory")
        stderr = _Bounded()
        with tempfile.TemporaryFile() as spool:
            await anyio.to_thread.run_sync(_pack, local, spool, uid, gid)
            spool.seek(0)
            code = await self.exec_stream(
                name,
                ["sh", "-c", _UNPACK_SCRIPT, "sh", remote],
                stdin=_read_chunks(spool),
                on_stderr=stderr.add,
            )
        if code != 0:
            message = stderr.text() or f"tar exited with {code}"
            raise CoiError(f"copying {local} to {name}:{remote} failed: {message}")

    async def pull_directory(
        self, name: str, remote: str, local: Path, *, keep_owner: bool = False
    ) -> list[str]:
        """Make `local` a copy of the directory `remote`, replacing whatever `local` was.

        The copy is unpacked beside `local` and renamed into place; the parent of `local` must
        exist. With `keep_owner` (and only as root) files keep their numeric owners. Returns the
        entries left out because they would have landed, or pointed, outside `local`.
        """
        stderr = _Bounded()
        with tempfile.TemporaryFile() as spool:

            async def spill(data: bytes) -> None:
                await anyio.to_thread.run_sync(spool.write, data)

            code = await self.exec_stream(
                name, ["tar", "-c", "-f", "-", "-C", remote, "."], on_stdout=spill, on_stderr=stderr.add
            )
            if code != 0:
                message = stderr.text() or f"tar exited with {code}"
                raise CoiError(f"cannot read {name}:{remote}: {message}")
            spool.seek(0)
            staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.", suffix=".coi-pull", dir=local.parent))
            try:
                skipped = await anyio.to_thread.run_sync(
                    functools.partial(_unpack, spool, staging, keep_owner=keep_owner)
                )
                await anyio.to_thread.run_sync(_replace, staging, local)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_remove, staging)
                raise
        return skipped


class _Bounded:
    """The first few KiB of a command's error output."""

    def __init__(self, limit: int = _STDERR_MAX) -> None:
        self._data = bytearray()
        self._limit = limit

    async def add(self, data: bytes) -> None:
        room = self._limit - len(self._data)
        if room > 0:
            self._data += data[:room]

    def text(self) -> str:
        return bytes(self._data).decode(errors="replace").strip()


async def _read_chunks(fh: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(fh.read, _CHUNK):
        yield chunk


def _pack(root: Path, out: IO[bytes], uid: int | None, gid: int | None) -> None:
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


def _unpack(spool: IO[bytes], dest: Path, *, keep_owner: bool) -> list[str]:
    """Unpack into the fresh directory `dest`, skipping (and naming) every entry that would land
    or point outside it, or is a special file."""
    skipped: list[str] = []

    def safe(member: tarfile.TarInfo, where: str) -> tarfile.TarInfo | None:
        try:
            checked = tarfile.data_filter(member, where)
        except tarfile.FilterError:
            skipped.append(member.name)
            return None
        # data_filter's verdict on the path and link; the member's own mode, made harmless.
        mode = member.mode & _PULL_MODE_MASK
        if keep_owner:
            return checked.replace(mode=mode, uid=member.uid, gid=member.gid, uname="", gname="", deep=False)
        return checked.replace(mode=mode, deep=False)

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
