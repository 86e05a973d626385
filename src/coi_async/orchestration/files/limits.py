"""The configured `[limits]` as the caps of a copy out of a container, and the key to raise."""

from __future__ import annotations

from coi_async.config.model import Limits
from coi_async.errors import ArchiveLimitError, CoiError
from coi_async.untar import Caps

# Which config key each cap comes from.
_KEYS = {
    "max_members": "limits.max_save_files",
    "max_file_bytes": "limits.max_save_file_bytes",
    "max_total_bytes": "limits.max_save_bytes",
}


def copy_caps(limits: Limits) -> Caps:
    return Caps(
        max_members=limits.max_save_files,
        max_file_bytes=limits.max_save_file_bytes,
        max_total_bytes=limits.max_save_bytes,
    )


def limit_note(exc: CoiError) -> str:
    """For a cap that was hit, what to say after the error (" (limit: <key>)"); else ""."""
    if isinstance(exc, ArchiveLimitError) and exc.cap in _KEYS:
        return f" (limit: {_KEYS[exc.cap]})"
    return ""
