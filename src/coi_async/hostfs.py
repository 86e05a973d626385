"""Files coi keeps on the host for the user (~/.coi): private from their first byte. Pure."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def make_private_dir(path: Path) -> None:
    """Make `path` and each missing parent with mode 0700 (os.makedirs gives the parents the
    umask's mode); directories that exist already are left as they are."""
    missing: list[Path] = []
    while not os.path.lexists(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never a part.

    The file is 0600 (mkstemp's mode) from its first byte to its last.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
