"""coi-async: run AI coding CLIs in isolated Incus containers, many at once."""

from __future__ import annotations

from coi_async._version import __version__

__all__ = ["__version__"]
