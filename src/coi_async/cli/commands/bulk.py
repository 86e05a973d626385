"""`coi shutdown`, `coi kill`, `coi clean`: ending many containers at once.

Flags, prompts and lines follow the reference (cli-contract.md); the work runs concurrently
through `orchestration.bulk.run_bulk`, and each container's session data is saved first.
Ctrl-C (or SIGTERM) stops starting new work: containers already being stopped finish (a
graceful stop becomes a forced one), the rest are left untouched, and the exit code is 130.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, TextIO

import anyio
import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._options import format_option
from coi_async.errors import CoiError, UsageError

if TYPE_CHECKING:
    from coi_async.cli.bulk_view import Verb
    from coi_async.config import Config
    from coi_async.orchestration.bulk.lifecycle import SessionSaver
    from coi_async.orchestration.events import Emit
    from coi_async.orchestration.runner import Action, BulkReport
    from coi_async.orchestration.sessions.store import SessionStore

INTERRUPTED_EXIT = 130
# The signals that interrupt a bulk run (the rest keep their default action).
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Per-item budget before an item commits (i.e. for saving its session data).
_PREPARE_S = 330.0
# What shutdown and kill are called in their question, in their summary and in its "none" line.
_WORDS = {"shutdown": ("Shutdown", "Shutdown", "shutdown"), "kill": ("Kill", "Killed", "killed")}


def _check_parallel(parallel: int | None, config: Config) -> int:
    value = config.defaults.parallel if parallel is None else parallel
    if value < 1:
        raise UsageError("--parallel must be at least 1")
    return value


def _check_names(names: Sequence[str], *, all_: bool) -> None:
    if all_ and names:
        raise UsageError("--all cannot be combined with container names")
    if not all_ and not names:
        raise UsageError("no container names provided - use 'coi list' to see active containers")


class _Out:
    """Where human text goes: stdout normally, stderr when stdout carries JSON."""

    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"
        self.stream: TextIO = sys.stderr if self.json else sys.stdout

    def echo(self, line: str = "") -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def confirm(self, question: str) -> bool:
        """One token from stdin; only y/Y proceeds; EOF counts as no."""
        self.stream.write(question)
        self.stream.flush()
        words = sys.stdin.readline().split()
        return bool(words) and words[0] in ("y", "Y")


def _saver(config: Config) -> tuple[SessionSaver, SessionStore]:
    from coi_async.orchestration.bulk.lifecycle import SessionSaver
    from coi_async.orchestration.sessions.store import SessionStore
    from coi_async.tools import get_tool

    tool = get_tool(config.tool.name)
    store = SessionStore(config.sessions_dir, config_dir=tool.config_dir)
    return SessionSaver(store, tool, config), store


async def _run(
    out: _Out,
    names: Sequence[str],
    action: Action,
    *,
    verb: Verb,
    parallel: int,
    report: BulkReport,
) -> None:
    from coi_async.cli import bulk_view as view
    from coi_async.orchestration import events
    from coi_async.orchestration.interrupts import interruptible
    from coi_async.orchestration.runner import run_bulk

    emit: Emit
    table: view.LiveTable | None = None
    if out.json:
        emit = events.ignore
    elif view.is_terminal(sys.stdout):
        emit = table = view.LiveTable(verb, names)
    else:
        emit = view.LineReporter(verb, out.stream)

    # A signal cancels the run instead of the event loop's own KeyboardInterrupt.
    async with interruptible(_SIGNALS) as interrupt:
        with interrupt.scope, view.live_view(table):
            await run_bulk(names, action, limit=parallel, per_item_s=_PREPARE_S, emit=emit, report=report)
    if interrupt.scope.cancel_called:
        report.interrupted = True


async def _confirm_then_run(
    out: _Out, names: list[str], action: Action, verb: Verb, *, force: bool, parallel: int, into: BulkReport
) -> bool:
    """List what is about to go, ask unless forced, run, and add the results to `into`.

    False when the user said no. A run of its own, then merged: `run_bulk` sets the report's
    elapsed time, and `clean` adds up two runs.
    """
    from coi_async.orchestration.runner import BulkReport

    out.echo(f"Found {len(names)} {verb.found}:")
    for name in names:
        out.echo(f"  - {name}")
    if not force and not out.confirm(verb.prompt):
        out.echo("Cancelled.")
        return False
    part = BulkReport()
    await _run(out, names, action, verb=verb, parallel=parallel, report=part)
    into.results.extend(part.results)
    into.elapsed_s += part.elapsed_s
    into.interrupted = part.interrupted
    return True


def _finish(
    out: _Out,
    report: BulkReport,
    *,
    command: str,
    done_line: Callable[[int], str],
    none_line: str,
    failure: str,
) -> None:
    """The summary, the JSON document, and the exit code."""
    from coi_async.cli import bulk_view as view

    if out.json:
        sys.stdout.write(view.report_json(report, command=command) + "\n")
        sys.stdout.flush()
    else:
        view.failure_summary(report, out.echo)
        ok = len(report.succeeded)
        out.echo(done_line(ok) if ok else none_line)
    if report.interrupted:
        raise click.exceptions.Exit(INTERRUPTED_EXIT)
    if report.failed:
        names = ", ".join(r.item for r in report.failed)
        raise CoiError(f"{failure}: {len(report.failed)} of {len(report.results)} failed ({names})")


def _unknown_results(report: BulkReport, unknown: Sequence[str]) -> None:
    from coi_async.orchestration.events import ItemResult

    for name in unknown:
        report.results.append(
            ItemResult(item=name, outcome="failed", duration_s=0.0, error=f"container {name} does not exist")
        )


async def _end_containers(
    app: App,
    *,
    names: tuple[str, ...],
    all_: bool,
    force: bool,
    parallel: int | None,
    fmt: str,
    kind: str,
    timeout_s: int = 0,
) -> None:
    """What `shutdown` and `kill` share: select, confirm, run, summarise."""
    from coi_async.cli import bulk_view as view
    from coi_async.orchestration.bulk import lifecycle as lc
    from coi_async.orchestration.runner import BulkReport, ItemContext

    _check_names(names, all_=all_)
    config = app.config()
    limit = _check_parallel(parallel, config)
    out = _Out(fmt)
    saver, _ = _saver(config)
    noun, past, participle = _WORDS[kind]
    verb = view.shutdown_verb(timeout_s) if kind == "shutdown" else view.KILL
    report = BulkReport()
    async with app.incus() as incus:
        selection = await lc.select(incus, prefix=config.container_prefix, names=names, all_=all_)
        targets = selection.found
        by_name = {inst.name: inst for inst in targets}

        async def action(ctx: ItemContext) -> None:
            inst = by_name[ctx.name]
            if kind == "shutdown":
                await lc.shutdown_one(ctx, incus, inst, saver=saver, grace_s=timeout_s)
            else:
                await lc.kill_one(ctx, incus, inst, saver=saver)

        if all_:
            if not targets:
                out.echo(f"No containers to {kind}")
                if out.json:
                    _finish(out, report, command=kind, done_line=str, none_line="", failure="")
                return
            if not await _confirm_then_run(
                out, list(by_name), action, verb, force=force, parallel=limit, into=report
            ):
                return
        else:
            for name in selection.unknown:
                sys.stderr.write(f"Warning: Container {name} does not exist\n")
            if not targets:
                missing = ", ".join(selection.unknown)
                raise CoiError(f"no such container: {missing}", hint="see 'coi list'")
            if (
                len(names) > 1
                and not force
                and not out.confirm(f"{noun} {len(targets)} container(s)? [y/N]: ")
            ):
                out.echo("Cancelled.")
                return
            _unknown_results(report, selection.unknown)
            await _run(out, list(by_name), action, verb=verb, parallel=limit, report=report)

    _finish(
        out,
        report,
        command=kind,
        done_line=lambda n: f"\n{past} {n} container(s)",
        none_line=f"\nNo containers were {participle}",
        failure=f"failed to {kind} specified containers",
    )


_format_option = format_option("text", "json", description="json: one result per container on stdout.")
_parallel = click.option(
    "--parallel",
    type=int,
    default=None,
    help="How many containers to work on at once (default: defaults.parallel from config, 32).",
)


@click.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Shut down every coi container.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--timeout", "timeout_s", type=int, default=60, show_default=True, help="Seconds for a graceful stop."
)
@_parallel
@_format_option
@click.pass_obj
async def shutdown(
    app: App,
    *,
    names: tuple[str, ...],
    all_: bool,
    force: bool,
    timeout_s: int,
    parallel: int | None,
    fmt: str,
) -> None:
    """Save session data, stop gracefully (forced after --timeout) and delete containers."""
    if timeout_s <= 0:
        raise UsageError("--timeout must be greater than 0")
    await _end_containers(
        app,
        names=names,
        all_=all_,
        force=force,
        parallel=parallel,
        fmt=fmt,
        kind="shutdown",
        timeout_s=timeout_s,
    )


@click.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Kill every coi container.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@_parallel
@_format_option
@click.pass_obj
async def kill(
    app: App, *, names: tuple[str, ...], all_: bool, force: bool, parallel: int | None, fmt: str
) -> None:
    """Save session data, force stop and delete containers at once."""
    await _end_containers(app, names=names, all_=all_, force=force, parallel=parallel, fmt=fmt, kind="kill")


@click.command()
@click.option("--all", "all_", is_flag=True, help="Stopped containers and saved sessions.")
@click.option("--sessions", is_flag=True, help="Saved session data only.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@_parallel
@_format_option
@click.pass_obj
async def clean(app: App, *, all_: bool, sessions: bool, force: bool, parallel: int | None, fmt: str) -> None:
    """Delete stopped containers (their session data saved first) and/or saved sessions."""
    from coi_async.cli import bulk_view as view
    from coi_async.orchestration.bulk import lifecycle as lc
    from coi_async.orchestration.runner import BulkReport, ItemContext

    config = app.config()
    limit = _check_parallel(parallel, config)
    out = _Out(fmt)
    saver, store = _saver(config)
    report = BulkReport()
    confirm_then_run = partial(_confirm_then_run, out, force=force, parallel=limit, into=report)

    if all_ or not sessions:
        out.echo("Checking for stopped claude-on-incus containers...")
        async with app.incus() as incus:
            selection = await lc.select(incus, prefix=config.container_prefix, all_=True, stopped_only=True)
            stopped = {inst.name: inst for inst in selection.found}
            if not stopped:
                out.echo("  (no stopped containers found)")
            else:

                async def remove(ctx: ItemContext) -> None:
                    await lc.remove_stopped_one(ctx, incus, stopped[ctx.name], saver=saver)

                if not await confirm_then_run(list(stopped), remove, view.CLEAN_CONTAINERS):
                    return

    if (all_ or sessions) and not report.interrupted:
        out.echo("\nChecking for saved session data...")
        saved = await anyio.to_thread.run_sync(partial(store.list_sessions, with_data_only=False))
        if not saved:
            out.echo("  (no saved sessions found)")
        else:

            async def forget(ctx: ItemContext) -> None:
                await lc.delete_session_one(ctx, store, ctx.name)

            if not await confirm_then_run([s.id for s in saved], forget, view.CLEAN_SESSIONS):
                return

    _finish(
        out,
        report,
        command="clean",
        done_line=lambda n: f"\n✓ Cleaned {n} item(s)",
        none_line="\nNothing to clean.",
        failure="failed to clean",
    )
