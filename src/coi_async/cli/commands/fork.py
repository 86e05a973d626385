"""`coi fork CONTAINER [-n N] [--worktree]`: new sessions, each a copy of a running one."""

from __future__ import annotations

import json
import os
import signal
from typing import TYPE_CHECKING, Any

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._lowlevel import say
from coi_async.cli.commands._options import format_option
from coi_async.errors import CoiError

if TYPE_CHECKING:
    from coi_async.orchestration.sessions.fork import ForkReport

INTERRUPTED_EXIT = 130


def fork_lines(report: ForkReport) -> list[str]:
    """One line per fork made (and its worktree under it)."""
    lines: list[str] = []
    for fork in report.forks:
        lines.append(f"Forked {report.source} into {fork.container} (session {fork.session_id})")
        if fork.worktree:
            lines.append(f"  Worktree: {fork.worktree} (branch {fork.branch})")
    return lines


def fork_json(report: ForkReport) -> str:
    forks: list[dict[str, Any]] = [
        {
            "container": f.container,
            "session_id": f.session_id,
            "slot": f.slot,
            "forked_from": f.forked_from,
            "workspace": f.workspace,
            "tmux_session": f.tmux,
            "worktree": f.worktree or None,
            "branch": f.branch or None,
        }
        for f in report.forks
    ]
    failed = [{"session_id": r.item, "error": r.error or r.outcome} for r in report.failed]
    doc = {"source": report.source, "forks": forks, "failed": failed}
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)


@click.command()
@click.argument("container")
@click.option("-n", "count", type=int, default=1, show_default=True, help="How many forks to make.")
@click.option(
    "--worktree",
    is_flag=True,
    help="Give each fork its own git worktree of the workspace, on a new branch coi/fork-<id>.",
)
@format_option("text", "json", description="Output format.")
@click.pass_obj
async def fork(app: App, *, container: str, count: int, worktree: bool, fmt: str) -> None:
    """Fork a running session into N new ones, each in a free slot of its workspace.

    Each fork's container is a copy-on-write copy of CONTAINER's as it is now (installed
    packages, files, the tool's state), and its tool goes on with a copy of CONTAINER's
    conversation under a new session id, in a detached tmux session (`coi attach` it). They
    share the workspace directory with CONTAINER; with --worktree, each fork gets its own git worktree of the workspace (in ~/.coi/worktrees/) at
    /workspace, so the forks' files are apart from each other's and from the workspace's; the
    workspace must be a git repository without uncommitted changes. Forks are ordinary sessions;
    `coi list` shows where each came from.
    """
    from coi_async.cli.terminal import LocalTerminal
    from coi_async.orchestration.interrupts import interruptible
    from coi_async.orchestration.sessions.fork import ForkReport, ForkRequest, fork_session

    config = app.config()
    if worktree and app.is_remote():
        from coi_async.errors import UsageError

        raise UsageError(
            f"--worktree makes each fork's worktree on this machine, which remote "
            f"'{app.remote_name()}' cannot see: fork there without it"
        )
    request = ForkRequest(
        container=container,
        count=count,
        worktree=worktree,
        use_dummy=os.environ.get("COI_USE_DUMMY") == "1",
        term=os.environ.get("TERM"),
        size=LocalTerminal().size(),
    )
    report = ForkReport(source=container)
    async with app.incus() as incus, interruptible((signal.SIGINT, signal.SIGTERM)) as interrupt:
        with interrupt.scope:
            await fork_session(incus, config, request, report=report)
    if fmt == "json":
        click.echo(fork_json(report))
    else:
        for line in fork_lines(report):
            click.echo(line)
    if interrupt.signum is not None:
        say(f"Interrupted: {len(report.forks)} of {count} forks made")
        raise click.exceptions.Exit(INTERRUPTED_EXIT)
    failed = report.failed
    if not failed:
        return
    if count == 1:
        raise CoiError(f"could not fork {container}: {failed[0].error or failed[0].outcome}")
    for result in failed:
        say(f"Failed to fork {container} (session {result.item}): {result.error or result.outcome}")
    raise CoiError(f"{len(failed)} of {count} forks of {container} failed")
