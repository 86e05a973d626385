"""Per-session connection logs: one JSON record per line, bounded in size.

A session can make connections as fast as it likes, so a log is rotated once it passes
`MAX_BYTES` (the previous part kept as `<path>.1`): what the log costs on disk is bounded whatever
the container does. Files are opened on first write and closed when their session goes, so a
removed session leaves no open handle behind. Writes are small appends to a local file, made
from the event loop; a failing write (full disk) loses that record, never the connection.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec

from coi_async.egress.connection import ConnectionRecord
from coi_async.hostfs import make_private_dir

MAX_BYTES = 16 * 1024 * 1024
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(ConnectionRecord)


class SessionLog:
    def __init__(self, path: str, *, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._file: BinaryIO | None = None
        self._size = 0
        self.lost = 0

    def write(self, record: ConnectionRecord) -> None:
        line = _ENCODER.encode(record) + b"\n"
        try:
            if self._file is None:
                self._open()
            elif self._size + len(line) > self._max_bytes:
                self.close()
                os.replace(self.path, self.path + ".1")
                self._open()
            assert self._file is not None
            self._file.write(line)
            self._file.flush()
            self._size += len(line)
        except OSError:
            self.lost += 1
            self.close()

    def _open(self) -> None:
        # Parents too: the log may be the first thing made under ~/.coi.
        make_private_dir(Path(self.path).parent)
        # O_NOFOLLOW: the log's directory is the user's; a link planted there is not followed.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "ab")
        self._size = os.fstat(fd).st_size

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()


def read_records(path: str) -> Iterator[ConnectionRecord]:
    """The records of a session's log, oldest first (the rotated part, then the current one);
    lines that do not decode (a torn last line) are skipped."""
    for part in (path + ".1", path):
        try:
            with open(part, "rb") as fh:
                for line in fh:
                    record = decode_line(line)
                    if record is not None:
                        yield record
        except FileNotFoundError:
            continue


def decode_line(line: bytes) -> ConnectionRecord | None:
    try:
        return _DECODER.decode(line)
    except msgspec.DecodeError:
        return None
