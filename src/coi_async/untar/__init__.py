"""Safe unpacking of what comes out of a container as a tar stream (saves, `file pull -r`).

Pure: it reads a local file and writes below a local directory; it imports nothing of coi but
the errors, and depends on no tarfile filter of any Python version.
"""

from coi_async.untar.caps import Budget, Caps
from coi_async.untar.extract import MODE_MASK, PRIVATE_MODE_MASK, Extracted, check, extract, normalise

__all__ = [
    "MODE_MASK",
    "PRIVATE_MODE_MASK",
    "Budget",
    "Caps",
    "Extracted",
    "check",
    "extract",
    "normalise",
]
