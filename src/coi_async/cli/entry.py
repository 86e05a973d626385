"""The `coi` executable. `coi --version` is answered from here, before the CLI's own imports
(asyncclick, msgspec and the rest cost ten times what Python's start-up does); everything else
goes to `coi_async.cli.main`."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from coi_async._version import __version__

        sys.stdout.write(f"coi version {__version__}\n")
        return
    from coi_async.cli.main import main as cli

    cli()
