"""How much a copy out of a container may hold, and the running count against it. Pure."""

from __future__ import annotations

import msgspec

from coi_async.errors import ArchiveLimitError
from coi_async.untar.reader import printable

# Per member, what a tar stream may spend besides the file data: its header, padding to a
# block, a long name or a PAX header. The spool of a stream is capped at data plus this.
_OVERHEAD_PER_MEMBER = 3 * 1024
_OVERHEAD_FIXED = 1 << 20


class Caps(msgspec.Struct, frozen=True, kw_only=True):
    """The most a copy may hold: entries of any kind, bytes in one file, bytes in all."""

    max_members: int
    max_file_bytes: int
    max_total_bytes: int

    @property
    def max_stream_bytes(self) -> int:
        """The most a tar stream within these caps can take (its data plus header overhead)."""
        return self.max_total_bytes + self.max_members * _OVERHEAD_PER_MEMBER + _OVERHEAD_FIXED

    @property
    def max_name_bytes(self) -> int:
        """The most all names and link targets together may take in memory."""
        return self.max_members * 1024


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


class Budget:
    """The entries and bytes taken so far; each `take_*` raises ArchiveLimitError past a cap."""

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.members = 0
        self.total_bytes = 0
        self.name_bytes = 0

    def take_member(self, name: str, link: str = "") -> None:
        self.members += 1
        if self.members > self.caps.max_members:
            raise ArchiveLimitError(f"more than {self.caps.max_members} entries", cap="max_members")
        self.name_bytes += len(name) + len(link)
        if self.name_bytes > self.caps.max_name_bytes:
            raise ArchiveLimitError(
                f"names longer than {_size(self.caps.max_name_bytes)} in all", cap="max_members"
            )

    def take_bytes(self, name: str, file_size: int, added: int) -> None:
        """`added` more bytes, of the file `name` that is (or claims to be) `file_size` long."""
        if file_size > self.caps.max_file_bytes:
            raise ArchiveLimitError(
                f"{printable(name)} is larger than {_size(self.caps.max_file_bytes)}", cap="max_file_bytes"
            )
        self.total_bytes += added
        if self.total_bytes > self.caps.max_total_bytes:
            raise ArchiveLimitError(
                f"more than {_size(self.caps.max_total_bytes)} in all", cap="max_total_bytes"
            )

    def check_stream(self, stream_bytes: int) -> None:
        """A tar stream of `stream_bytes` so far; past `Caps.max_stream_bytes` it cannot fit."""
        if stream_bytes > self.caps.max_stream_bytes:
            raise ArchiveLimitError(
                f"the tar stream is larger than {_size(self.caps.max_stream_bytes)}",
                cap="max_total_bytes",
            )
