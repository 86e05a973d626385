"""Image recipes shipped with coi: the base from Debian packages, the `coi` image's steps, the test stub.

They live inside the package so that `coi build` works from any directory, not only a checkout.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

RECIPES = Path(__file__).resolve().parent
BASE_DIR = RECIPES / "base"
COI_SCRIPT = RECIPES / "coi.sh"  # the `coi` image's core step
TOOL_SCRIPT = RECIPES / "tool.sh"  # its step for one AI tool
DUMMY = RECIPES / "dummy"


def files_hash(*paths: Path, extra: tuple[str, ...] = ()) -> str:
    """sha256 over the files' names, modes and contents (directories: every file below), plus `extra`.

    A rename, a chmod +x or an edit each changes it; it is stored as the image property
    user.coi.recipe so that an unchanged recipe reuses its image.
    """
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            name = file.relative_to(RECIPES) if file.is_relative_to(RECIPES) else file.name
            digest.update(f"{name} {file.stat().st_mode & 0o777:o} ".encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    for item in extra:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()
