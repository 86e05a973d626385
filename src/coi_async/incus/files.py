"""Files in instances: single files through the files API, whole directories as tar over exec.

incusd reads only `X-Incus-*` headers for ownership and mode; anything else is silently ignored.
Directory pulls are unpacked with tarfile's "data" filter, so nothing in an instance (absolute
names, `..`, links pointing out) can make a pull write outside the local target.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
import anyio.to_thread

from coi_async.errors import CoiError, FileHelperNotReadyError, IncusError
from coi_async.incus.base import decode
from coi_async.incus.exec import ExecApi
from coi_async.incus.paths import instance_path
from coi_async.incus.transport import RawResponse, decode_envelope

_CHUNK = 256 * 1024
_FILES_ATTEMPTS = 10


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
        """Copy a local directory's contents into `remote` (created if missing) as a tar stream."""
        if not await anyio.Path(local).is_dir():
            raise CoiError(f"{local} is not a directory")
        with tempfile.TemporaryFile() as spool:
            await anyio.to_thread.run_sync(_pack, local, spool, uid, gid)
            spool.seek(0)
            result = await self.exec(name, ["mkdir", "-p", remote])
            if not result.ok:
                raise CoiError(f"cannot create {remote} in {name}: {result.stderr.decode().strip()}")
            result = await self.exec(name, ["tar", "-x", "-f", "-", "-C", remote], stdin=_read_chunks(spool))
        if not result.ok:
            raise CoiError(f"copying {local} into {name}:{remote} failed: {result.stderr.decode().strip()}")

    async def pull_directory(self, name: str, remote: str, local: Path) -> list[str]:
        """Copy the contents of `remote` into the local directory `local` (created if missing).

        Returns the entries left out because they would have written, or pointed, outside `local`.
        """
        with tempfile.TemporaryFile() as spool:

            async def spill(data: bytes) -> None:
                await anyio.to_thread.run_sync(spool.write, data)

            errors: list[bytes] = []

            async def keep_err(data: bytes) -> None:
                errors.append(data)

            code = await self.exec_stream(
                name, ["tar", "-c", "-f", "-", "-C", remote, "."], on_stdout=spill, on_stderr=keep_err
            )
            if code != 0:
                message = b"".join(errors).decode(errors="replace").strip()
                raise CoiError(f"cannot read {remote} in {name}: {message or f'tar exited {code}'}")
            spool.seek(0)
            return await anyio.to_thread.run_sync(_unpack, spool, local)


async def _read_chunks(fh: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(fh.read, _CHUNK):
        yield chunk


def _pack(root: Path, out: IO[bytes], uid: int | None, gid: int | None) -> None:
    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if uid is not None:
            info.uid, info.uname = uid, ""
        if gid is not None:
            info.gid, info.gname = gid, ""
        return info

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(root)):
            tar.add(root / entry, arcname=entry, filter=owner)


def _unpack(spool: IO[bytes], target: Path) -> list[str]:
    """Unpack into `target`, skipping (and naming) every entry that would land or point outside."""
    target.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []

    def safe(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        try:
            return tarfile.data_filter(member, dest)
        except tarfile.FilterError:
            skipped.append(member.name)
            return None

    with tarfile.open(fileobj=spool, mode="r") as tar:
        tar.extractall(target, filter=safe)
    return skipped
