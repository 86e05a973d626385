"""Unpack a tar archive that an attacker wrote into a fresh directory, and nothing else.

What it writes, whatever the Python version's tarfile filters would do:
- regular files and directories; symbolic links only when they stay inside (`links`), made last,
  once the whole archive is known; hard links only to regular files of the archive already
  unpacked. Devices, fifos, sparse files, links that leave, names that are absolute or climb
  (`..`) are left out and named in the result;
- modes without set-uid, set-gid, sticky and group/other write bits; directories always
  writable by their owner, so the copy can be replaced later; owners only when asked;
- every write goes through directory file descriptors opened with O_NOFOLLOW, files are created
  with O_EXCL: the host never follows a link it did not make, and nothing is written through one.

The archive is read twice: first to check it against its `Caps` (nothing is written if it is over
one), then to unpack it. Any failure is an `ArchiveError`; the caller throws the directory away.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

from coi_async.errors import ArchiveError
from coi_async.untar.caps import Budget, Caps
from coi_async.untar.links import LinkChecker, Parts
from coi_async.untar.reader import NAME_MAX_BYTES, Kind, Member, members, printable, read_data

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What a mode may keep: no set-uid/set-gid/sticky bits, no group/other write.
MODE_MASK = 0o755
# For copies into the user's private store (~/.coi): the owner's bits only.
PRIVATE_MODE_MASK = 0o700
_CHUNK = 1 << 20
_FILE, _DIR = "file", "directory"


@dataclass(slots=True)
class Extracted:
    skipped: list[str] = field(default_factory=list)  # archive names left out (`printable`)


def normalise(name: str) -> Parts | None:
    """The path components of an archive name (`./a//b` is `a/b`, `.` is the root); None for an
    absolute name, one that climbs (`..`), or one no file system would take."""
    if name.startswith("/") or "\0" in name or len(name.encode(errors="surrogateescape")) > NAME_MAX_BYTES:
        return None
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if any(p == ".." or len(p.encode(errors="surrogateescape")) > 255 for p in parts):
        return None
    return parts


class _Tree:
    """The directory being filled, walked only through directories this run made itself."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.kinds: dict[Parts, str] = {(): _DIR}
        self._cached: tuple[Parts, int] | None = None

    def open_dir(self, parts: Parts, *, create: bool) -> int | None:
        """A new descriptor of the directory `parts` (made, with its parents, if `create`);
        None when a component is a file, or missing and not to be made."""
        fd = os.dup(self.root)
        try:
            for i, name in enumerate(parts):
                kind = self.kinds.get(parts[: i + 1])
                if kind == _FILE or (kind is None and not create):
                    os.close(fd)
                    return None
                if kind is None:
                    os.mkdir(name, 0o700, dir_fd=fd)
                    self.kinds[parts[: i + 1]] = _DIR
                inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    def parent(self, parts: Parts, *, create: bool) -> int | None:
        """Like `open_dir`, but the descriptor stays the tree's (members come grouped by directory)."""
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd = self.open_dir(parts, create=create)
        if fd is not None:
            self.close()
            self._cached = (parts, fd)
        return fd

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Unpacker:
    def __init__(
        self, fh: BinaryIO, tree: _Tree, *, keep_owner: bool, mode_mask: int, stop: threading.Event | None
    ) -> None:
        self._fh = fh
        self._tree = tree
        self._keep_owner = keep_owner
        self._mode_mask = mode_mask
        self._stop = stop
        self.skipped: list[str] = []
        self._links: dict[Parts, Member] = {}
        self._dirs: dict[Parts, Member] = {}

    def _skip(self, m: Member) -> None:
        self.skipped.append(printable(m.name))

    def stopped(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise ArchiveError("unpacking was interrupted")

    def member(self, m: Member) -> None:
        parts = normalise(m.name)
        if parts is None or m.kind is Kind.OTHER:
            self._skip(m)
        elif m.kind is Kind.DIRECTORY:
            self._directory(m, parts)
        elif m.kind is Kind.SYMLINK and parts:
            self._links[parts] = m  # made last: see `finish`
        elif m.kind is Kind.FILE and parts:
            self._file(m, parts)
        elif m.kind is Kind.HARDLINK and parts:
            self._hardlink(m, parts)
        else:
            self._skip(m)  # a link or file named like the root itself

    def _directory(self, m: Member, parts: Parts) -> None:
        if self._tree.kinds.get(parts) == _FILE:
            self._skip(m)
            return
        fd = self._tree.parent(parts, create=True)
        if fd is None:
            self._skip(m)
            return
        self._dirs[parts] = m

    def _make_room(self, m: Member, parts: Parts) -> int | None:
        """The directory `parts` goes in, with nothing of its name left in it; None to skip."""
        if self._tree.kinds.get(parts) == _DIR:
            return None
        parent = self._tree.parent(parts[:-1], create=True)
        if parent is not None and self._tree.kinds.pop(parts, None) == _FILE:
            os.unlink(parts[-1], dir_fd=parent)  # a later member replaces an earlier one, as in tar
        return parent

    def _file(self, m: Member, parts: Parts) -> None:
        parent = self._make_room(m, parts)
        if parent is None:
            self._skip(m)
            return
        fd = os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            self._tree.kinds[parts] = _FILE
            for chunk in read_data(self._fh, m, _CHUNK):
                _write_all(fd, chunk)
            if self._keep_owner:
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & self._mode_mask)
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)

    def _hardlink(self, m: Member, parts: Parts) -> None:
        target = normalise(m.linkname)
        if target is None or target == parts or self._tree.kinds.get(target) != _FILE:
            self._skip(m)  # only to a file of this archive, unpacked already
            return
        source = self._tree.open_dir(target[:-1], create=False)
        if source is None:
            self._skip(m)
            return
        try:
            parent = self._make_room(m, parts)
            if parent is None:
                self._skip(m)
                return
            os.link(target[-1], parts[-1], src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
            self._tree.kinds[parts] = _FILE
        finally:
            os.close(source)

    def finish(self) -> None:
        """Make the links that stay inside, then give directories their modes and times."""
        candidates = {p: m.linkname for p, m in self._links.items() if p not in self._tree.kinds}
        checker = LinkChecker(candidates, stopped=self.stopped)
        for parts, m in self._links.items():
            parent = self._tree.parent(parts[:-1], create=False) if parts in candidates else None
            if parent is None or not checker.stays_inside(parts):
                self._skip(m)
                continue
            os.symlink(m.linkname, parts[-1], dir_fd=parent)
            if self._keep_owner:
                os.chown(parts[-1], m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(parts[-1], ns=(m.mtime_ns, m.mtime_ns), dir_fd=parent, follow_symlinks=False)
        self._tree.close()
        # Deepest first: setting a directory's time must come after everything inside it.
        for parts in sorted(self._dirs, key=len, reverse=True):
            m = self._dirs[parts]
            fd = self._tree.open_dir(parts, create=False)
            if fd is None:
                continue
            try:
                if self._keep_owner:
                    os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, m.mode & self._mode_mask | 0o700)
                os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
            finally:
                os.close(fd)


def check(fh: BinaryIO, caps: Caps, *, stop: threading.Event | None = None) -> None:
    """Read the whole archive in `fh` against `caps`; ArchiveError (ArchiveLimitError for a cap)
    if it is malformed or over one."""
    budget = Budget(caps)
    fh.seek(0)
    for count, m in enumerate(members(fh)):
        if stop is not None and count % 1024 == 0 and stop.is_set():
            raise ArchiveError("unpacking was interrupted")
        budget.take_member(m.name, m.linkname)
        budget.take_bytes(m.name, m.real_size, m.size if m.kind is Kind.FILE else 0)


def extract(
    fh: BinaryIO,
    dest: str,
    caps: Caps,
    *,
    keep_owner: bool = False,
    mode_mask: int = MODE_MASK,
    stop: threading.Event | None = None,
) -> Extracted:
    """Unpack the archive in `fh` (a regular file) into the empty directory `dest`, modes cut
    down to `mode_mask` (`PRIVATE_MODE_MASK`: the owner's bits only).

    With `keep_owner` files keep their numeric owners (only root may). Setting `stop` makes it
    give up soon with an ArchiveError. Raises ArchiveError for anything that goes wrong, with
    whatever was written left for the caller to remove.
    """
    try:
        check(fh, caps, stop=stop)
        root = os.open(dest, _DIR_FLAGS)
    except ArchiveError:
        raise
    except OSError as exc:
        raise ArchiveError(f"cannot unpack into {dest}: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise ArchiveError(f"cannot read the tar stream: {exc!r}") from exc
    tree = _Tree(root)
    unpacker = _Unpacker(fh, tree, keep_owner=keep_owner, mode_mask=mode_mask, stop=stop)
    current = ""
    try:
        fh.seek(0)
        for m in members(fh):
            current = printable(m.name)
            unpacker.stopped()
            unpacker.member(m)
        current = ""
        unpacker.finish()
    except ArchiveError:
        raise
    except OSError as exc:
        where = f" {current}" if current else ""
        raise ArchiveError(f"cannot unpack{where}: {exc.strerror or exc}") from exc
    except Exception as exc:
        # Whatever else the data provoked is still this archive's failure, not a crash of coi.
        raise ArchiveError(f"cannot unpack the tar stream: {exc!r}") from exc
    finally:
        tree.close()
        os.close(root)
    return Extracted(skipped=unpacker.skipped)
