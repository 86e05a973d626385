"""A strict reader of tar archives: the members and where their data is, nothing written.

Written for attacker-made input, so it is deliberately narrow: ustar and GNU headers with their
checksums verified, GNU long names and link names, and PAX extended headers (path, linkpath,
size, uid, gid, mtime and the GNU sparse keys). Every number is checked, every extended header
is bounded, and a member whose data would run past the end of the stream is an error. Anything
else it does not understand is an `ArchiveError`; member types it knows but that are not files,
directories or links (devices, fifos, sparse files, volume headers) come out as `OTHER` so the
caller can skip and name them. Pure: it reads a seekable binary stream and imports nothing of coi
but the error.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from coi_async.errors import ArchiveError

BLOCK = 512
# Longer than any path or link target Linux accepts (PATH_MAX): such a name cannot be real.
NAME_MAX_BYTES = 4096
# A PAX header says little per member; a larger one is garbage or an attack.
_EXTENDED_MAX_BYTES = 1 << 20
# GNU's old sparse format chains extension blocks; real ones need a handful.
_SPARSE_BLOCKS_MAX = 4096


class Kind(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    OTHER = "other"  # device, fifo, sparse file, volume label, ...: never written


@dataclass(frozen=True, slots=True)
class Member:
    name: str  # as the archive spells it (decoded with surrogateescape)
    kind: Kind
    what: str  # for OTHER: what it is ("device", "fifo", "sparse file", ...)
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int  # bytes of data stored in the archive
    real_size: int  # bytes the file would have once unpacked (larger for sparse files)
    linkname: str
    offset: int  # where the data starts in the stream


_TYPES: dict[bytes, tuple[Kind, str]] = {
    b"0": (Kind.FILE, ""),
    b"\0": (Kind.FILE, ""),
    b"7": (Kind.FILE, ""),  # contiguous file: a regular file everywhere but on a few old Unixes
    b"1": (Kind.HARDLINK, ""),
    b"2": (Kind.SYMLINK, ""),
    b"3": (Kind.OTHER, "character device"),
    b"4": (Kind.OTHER, "block device"),
    b"5": (Kind.DIRECTORY, ""),
    b"6": (Kind.OTHER, "fifo"),
    b"S": (Kind.OTHER, "sparse file"),
    b"D": (Kind.OTHER, "directory listing"),
    b"V": (Kind.OTHER, "volume label"),
    b"M": (Kind.OTHER, "multi-volume continuation"),
}


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def printable(name: str, limit: int = 256) -> str:
    """`name` fit for a message: control characters and undecodable bytes escaped (a container
    must not be able to drive the user's terminal through a file name), and cut to `limit`."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name[: limit + 1])
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _cstring(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _number(field: bytes, what: str) -> int:
    """An octal field, or GNU's base-256 for large values; never negative."""
    if field and field[0] & 0x80:
        if field[0] != 0x80:
            raise ArchiveError(f"malformed tar header: negative {what}")
        return int.from_bytes(field[1:], "big")
    text = _cstring(field).strip(b" ")
    if not text:
        return 0
    if not all(0x30 <= c <= 0x37 for c in text):
        raise ArchiveError(f"malformed tar header: {what} is not a number")
    return int(text, 8)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _check_sum(header: bytes) -> None:
    stored = _number(header[148:156], "checksum")
    blanked = header[:148] + b" " * 8 + header[156:]
    if stored == sum(blanked):
        return
    # Some old tars summed signed bytes.
    if stored != sum(blanked) - 256 * sum(1 for b in blanked if b > 127):
        raise ArchiveError("malformed tar header: bad checksum (not a tar stream, or a corrupt one)")


def _pax_records(data: bytes) -> dict[str, bytes]:
    """`<length> <key>=<value>\\n` records; later keys win."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        if space < 0 or not data[pos:space].isdigit():
            raise ArchiveError("malformed PAX header: bad record length")
        length = int(data[pos:space])
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ArchiveError("malformed PAX header: record runs past its length")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise ArchiveError("malformed PAX header: record without a key")
        records[_decode(key)] = value
        pos = end
    return records


def _pax_int(records: dict[str, bytes], key: str) -> int | None:
    value = records.get(key)
    if value is None:
        return None
    if not value.isdigit():
        raise ArchiveError(f"malformed PAX header: {key} is not a number")
    return int(value)


def _pax_mtime_ns(records: dict[str, bytes]) -> int | None:
    value = records.get("mtime")
    if value is None:
        return None
    whole, dot, frac = value.partition(b".")
    if not whole.isdigit() or (dot and not frac.isdigit()):
        raise ArchiveError("malformed PAX header: mtime is not a time")
    return int(whole) * 1_000_000_000 + int((frac + b"000000000")[:9] or b"0")


class _Stream:
    """A seekable stream of known length, read by absolute offsets."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.length = os.fstat(fh.fileno()).st_size

    def read(self, offset: int, size: int, what: str) -> bytes:
        if offset + size > self.length:
            raise ArchiveError(f"truncated tar stream: {what} runs past its end")
        self._fh.seek(offset)
        data = self._fh.read(size)
        if len(data) != size:
            raise ArchiveError(f"truncated tar stream: {what} runs past its end")
        return data


def members(fh: BinaryIO) -> Iterator[Member]:
    """Every member of the archive in `fh` (a regular file, read from its start), in order.

    Raises ArchiveError at the first thing that is not a well-formed tar archive. The end is the
    first all-zero block, or the end of the stream at a block boundary.
    """
    stream = _Stream(fh)
    pos = 0
    long_name: bytes | None = None
    long_link: bytes | None = None
    pax: dict[str, bytes] = {}
    while pos < stream.length:
        header = stream.read(pos, BLOCK, "a header")
        if header == bytes(BLOCK):
            return
        _check_sum(header)
        typeflag = header[156:157]
        size = _number(header[124:136], "size")
        data_at = pos + BLOCK
        if typeflag in (b"L", b"K", b"x", b"g"):
            limit = NAME_MAX_BYTES + 1 if typeflag in (b"L", b"K") else _EXTENDED_MAX_BYTES
            if size > limit:
                raise ArchiveError("malformed tar stream: an extended header is too large")
            data = stream.read(data_at, size, "an extended header")
            if typeflag == b"L":
                long_name = _cstring(data)
            elif typeflag == b"K":
                long_link = _cstring(data)
            elif typeflag == b"x":
                pax.update(_pax_records(data))
            # A global header ("g") is ignored: every member's own header names it.
            pos = data_at + _padded(size)
            continue
        magic = header[257:265]
        name = _cstring(header[0:100])
        if magic[:6] == b"ustar\0" and (prefix := _cstring(header[345:500])):
            name = prefix + b"/" + name
        if long_name is not None:
            name = long_name
        link = long_link if long_link is not None else _cstring(header[157:257])
        kind, what = _TYPES.get(typeflag, (Kind.OTHER, f"unknown type {typeflag!r}"))
        real_size = size
        if typeflag == b"S":
            real_size = max(real_size, _number(header[483:495], "sparse size"))
            extended, blocks = header[482], 0
            while extended:
                blocks += 1
                if blocks > _SPARSE_BLOCKS_MAX:
                    raise ArchiveError("malformed tar stream: endless sparse map")
                extended = stream.read(data_at, BLOCK, "a sparse map")[504]
                data_at += BLOCK
        if "path" in pax:
            name = pax["path"]
        if "linkpath" in pax:
            link = pax["linkpath"]
        if (pax_size := _pax_int(pax, "size")) is not None:
            size = pax_size
        real_size = max(real_size, size)
        if any(key.startswith("GNU.sparse.") for key in pax):
            kind, what = Kind.OTHER, "sparse file"
            for key in ("GNU.sparse.realsize", "GNU.sparse.size"):
                real_size = max(real_size, _pax_int(pax, key) or 0)
            name = pax.get("GNU.sparse.name", name)
        if len(name) > NAME_MAX_BYTES or len(link) > NAME_MAX_BYTES:
            raise ArchiveError("malformed tar stream: a name longer than any path")
        uid = _pax_int(pax, "uid")
        gid = _pax_int(pax, "gid")
        mtime_ns = _pax_mtime_ns(pax)
        yield Member(
            name=_decode(name),
            kind=kind,
            what=what,
            mode=_number(header[100:108], "mode") & 0o7777,
            uid=uid if uid is not None else _number(header[108:116], "uid"),
            gid=gid if gid is not None else _number(header[116:124], "gid"),
            mtime_ns=mtime_ns if mtime_ns is not None else _number(header[136:148], "mtime") * 1_000_000_000,
            size=size,
            real_size=real_size,
            linkname=_decode(link),
            offset=data_at,
        )
        # Checked after the caller has seen the member: a size over a limit says more.
        if data_at + size > stream.length:
            raise ArchiveError("truncated tar stream: a member's data runs past its end")
        pos = data_at + _padded(size)
        long_name = long_link = None
        pax = {}


def read_data(fh: BinaryIO, member: Member, chunk: int) -> Iterator[bytes]:
    """The stored data of `member`, in pieces of at most `chunk` bytes."""
    fh.seek(member.offset)
    left = member.size
    while left:
        data = fh.read(min(chunk, left))
        if not data:
            raise ArchiveError(f"truncated tar stream: the data of {member.name} runs past its end")
        left -= len(data)
        yield data
