"""Files in instances: single files through the files API, whole directories as tar over exec.

incusd reads only `X-Incus-*` headers for ownership and mode; anything else is silently ignored.

This is the one tar-over-exec implementation. Directories are packed with numeric owners (empty
user and group names), so ids survive where names differ between host and instance. A pull
trusts nothing in the instance:
- tar's output is spooled to an unlinked file beside the local target, and the command is cut
  off once the spool outgrows what the caller's `Caps` allow (`Caps.max_stream_bytes`);
- the spool is unpacked by `coi_async.untar` (which decides what is kept: no escaping names or
  links, no special files, no set-id bits, never through a link it did not make) into a fresh
  directory beside the target, renamed into place only when all went well: a failed pull
  leaves the target as it was and nothing half-made;
- every failure of the unpacking, whatever the data provoked, is an `ArchiveError`;
- only the last lines of tar's error output are kept.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
import anyio.to_thread

from coi_async.errors import (
    ArchiveError,
    CoiError,
    FileHelperNotReadyError,
    IncusError,
    InstanceNotFoundError,
    NotFoundError,
    ReadLimitError,
)
from coi_async.incus.base import decode
from coi_async.incus.exec import ExecApi
from coi_async.incus.paths import instance_path
from coi_async.incus.tarstream import (
    Spool,
    StderrTail,
    pack,
    read_chunks,
    refusal_at,
    remove_quietly,
    replace_with,
    run_stoppable,
)
from coi_async.incus.transport import RawResponse, decode_envelope
from coi_async.untar import MODE_MASK, Budget, Caps, extract

_FILES_ATTEMPTS = 10
# The most `pull_file` reads into memory unless its caller bounds it otherwise.
PULL_FILE_MAX_BYTES = 64 * 1024 * 1024
# Longer than any link target Linux allows (PATH_MAX).
_LINK_MAX = 4096
_UNPACK_SCRIPT = 'mkdir -p -- "$1" && exec tar -x -f - -C "$1"'


@dataclass(frozen=True, slots=True)
class FileInfo:
    type: str  # "file", "directory" or "symlink"
    uid: int
    gid: int
    mode: int
    # What incusd says the content's length is (a HEAD's: the file's size; 0 for a fifo, whose
    # GET would block until someone writes it); None when it does not say.
    size: int | None = None


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
            size=int(lowered["content-length"]) if "content-length" in lowered else None,
        )
    except ValueError as exc:
        raise IncusError(f"unexpected file headers from incusd: {exc}") from exc


def _owner_only(path: str, flags: int) -> int:
    """`open`'s opener for a file no one else may read, even while it is being written."""
    return os.open(path, flags, 0o600)


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

    async def pull_file(self, name: str, path: str, *, max_bytes: int = PULL_FILE_MAX_BYTES) -> FileContent:
        """Read a file of the instance into memory, with its ownership and mode.

        The instance decides what the file holds (it may be /dev/zero), so at most `max_bytes`
        are read: ReadLimitError past them.
        """
        for attempt in range(_FILES_ATTEMPTS):
            try:
                async with self._transport.download(
                    self._files(name), params=self._params({"path": path})
                ) as (headers, chunks):
                    info = file_info(headers)
                    if info.type == "directory":
                        raise CoiError(f"{path} in {name} is a directory")
                    data = bytearray()
                    async for chunk in chunks:
                        data += chunk
                        if len(data) > max_bytes:
                            raise ReadLimitError(
                                f"{path} in {name} is larger than {max_bytes} bytes", limit=max_bytes
                            )
                    return FileContent(info, bytes(data))
            except FileHelperNotReadyError:
                if attempt == _FILES_ATTEMPTS - 1:
                    raise
            await anyio.sleep(min(0.1 * (attempt + 1), 0.5))
        raise AssertionError("unreachable")

    async def pull_file_to(
        self, name: str, path: str, local: Path, *, budget: Budget | None = None, mode_mask: int = MODE_MASK
    ) -> FileInfo:
        """Stream a file of the instance into a local file (written beside, 0600 until complete,
        then renamed), its mode cut down to `mode_mask`; within `budget` if one is given."""
        partial = local.with_name(f".{local.name}.part")
        async with self._transport.download(self._files(name), params=self._params({"path": path})) as (
            headers,
            chunks,
        ):
            info = file_info(headers)
            if info.type == "directory":
                raise CoiError(f"{path} in {name} is a directory")
            try:
                await anyio.Path(partial).unlink(missing_ok=True)
                # "x": O_EXCL, so the partial file is ours and never a link someone left there.
                async with await anyio.open_file(partial, "xb", opener=_owner_only) as out:
                    written = 0
                    async for chunk in chunks:
                        written += len(chunk)
                        if budget is not None:
                            budget.take_bytes(path, written, len(chunk))
                        await out.write(chunk)
                await anyio.Path(partial).chmod(info.mode & mode_mask)
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
        stderr = StderrTail()
        with tempfile.TemporaryFile() as spool:
            await anyio.to_thread.run_sync(pack, local, spool, uid, gid)
            spool.seek(0)
            code = await self.exec_stream(
                name,
                ["sh", "-c", _UNPACK_SCRIPT, "sh", remote],
                stdin=read_chunks(spool),
                on_stderr=stderr.add,
            )
        if code != 0:
            message = stderr.text() or f"tar exited with {code}"
            raise CoiError(f"copying {local} to {name}:{remote} failed: {message}")

    async def pull_directory(
        self,
        name: str,
        remote: str,
        local: Path,
        *,
        caps: Caps,
        keep_owner: bool = False,
        mode_mask: int = MODE_MASK,
    ) -> list[str]:
        """Make `local` a copy of the directory `remote`, replacing whatever `local` was.

        The copy is unpacked beside `local` and renamed into place; the parent of `local` must
        exist. With `keep_owner` (and only as root) files keep their numeric owners; modes are
        cut down to `mode_mask` (see `coi_async.untar.extract`). Returns the
        entries left out (see `coi_async.untar`). ArchiveError (ArchiveLimitError when over one
        of `caps`) if the copy was refused; `local` is then as it was.
        """
        where = f"{name}:{remote}"
        stderr = StderrTail()
        try:
            # Beside the target, not in /tmp (often memory); entered just below.
            spool_file = tempfile.TemporaryFile(dir=local.parent)  # noqa: SIM115
        except OSError as exc:
            raise CoiError(f"cannot write in {local.parent}: {exc.strerror}") from exc
        with spool_file as fh:
            spool = Spool(fh, caps)
            try:
                code = await self.exec_stream(
                    name,
                    ["tar", "-c", "-f", "-", "-C", remote, "."],
                    on_stdout=spool.add,
                    on_stderr=stderr.add,
                )
            except Exception:
                # Closing the streams ended the command; the spool's reason is the one to tell.
                if spool.error is not None:
                    raise refusal_at(spool.error, where) from None
                raise
            if code != 0:
                message = stderr.text() or f"tar exited with {code}"
                raise CoiError(f"cannot read {where}: {message}")
            try:
                staging = Path(
                    tempfile.mkdtemp(prefix=f".{local.name}.", suffix=".coi-pull", dir=local.parent)
                )
            except OSError as exc:
                raise CoiError(f"cannot write in {local.parent}: {exc.strerror}") from exc
            try:
                try:
                    done = await run_stoppable(
                        lambda stop: extract(
                            fh, str(staging), caps, keep_owner=keep_owner, mode_mask=mode_mask, stop=stop
                        )
                    )
                except ArchiveError as exc:
                    raise refusal_at(exc, where) from exc
                await anyio.to_thread.run_sync(replace_with, staging, local)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(remove_quietly, staging)
                raise
        return done.skipped
