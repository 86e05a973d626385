"""Everything the CLI prints to a person. rich is imported lazily: one-shot commands start fast."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from coi_async.errors import CoiError

if TYPE_CHECKING:
    from rich.console import Console


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, no_color="NO_COLOR" in os.environ)


def error_line(error: CoiError) -> str:
    """The whole error on one line: what failed, then what to do about it."""
    return f"Error: {error}" + (f" ({error.hint})" if error.hint else "")


def show_error(error: CoiError) -> None:
    if not sys.stderr.isatty():
        sys.stderr.write(error_line(error) + "\n")
        return
    from rich.markup import escape

    hint = f" [dim]({escape(error.hint)})[/]" if error.hint else ""
    stderr_console().print(f"[bold red]Error:[/] {escape(str(error))}{hint}")
