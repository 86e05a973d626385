"""Options that commands of different families define alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import asyncclick as click

F = TypeVar("F", bound=Callable[..., Any])


def format_option(*choices: str, description: str) -> Callable[[F], F]:
    """`--format` into `fmt`, one of `choices`; the first is the default."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(list(choices)),
        default=choices[0],
        show_default=True,
        help=description,
    )


def tool_option(description: str) -> Callable[[F], F]:
    """`--tool NAME` into `tool`: an AI tool of the registry (checked where the config is resolved)."""
    return click.option("--tool", default=None, metavar="NAME", help=description)


def network_option() -> Callable[[F], F]:
    """`--network MODE` into `network`: the session's network mode (checked where the config is
    resolved)."""
    return click.option(
        "--network",
        default=None,
        metavar="MODE",
        help="Network mode: restricted (public hosts only), open, or allowlist (default: network.mode).",
    )


def workspace_option() -> Callable[[F], F]:
    """`-w/--workspace PATH` into `workspace`: the directory a new session mounts."""
    return click.option(
        "-w",
        "--workspace",
        default=".",
        show_default=True,
        help="Workspace directory to mount (over a remote: remote:PATH, its path on that server).",
    )
