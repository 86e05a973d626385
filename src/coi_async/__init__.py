"""coi-async: run AI coding CLIs in isolated Incus containers, many at once."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("coi-async")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
