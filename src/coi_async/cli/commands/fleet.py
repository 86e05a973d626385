"""`coi top`, `coi limit`, `coi events` and `coi wait`: the fleet at a glance."""

from __future__ import annotations

import sys
import time
from functools import partial
from typing import TYPE_CHECKING

import anyio
import asyncclick as click
import msgspec

from coi_async.cli.app import App
from coi_async.cli.commands._options import format_option
from coi_async.errors import UsageError
from coi_async.remotes import LOCAL

if TYPE_CHECKING:
    from coi_async.config import Config
    from coi_async.incus import IncusClient
    from coi_async.orchestration.fleet.events import FleetEvent
    from coi_async.orchestration.fleet.snapshot import FleetRow, Sample

_REFRESH_S = 1.0
# `--once`: the time between the two samples a CPU percentage needs.
_ONCE_SAMPLE_GAP_S = 0.5


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _short(workspace: str) -> str:
    return workspace.rsplit("/", 1)[-1] or workspace


def _agent(row: FleetRow) -> str:
    """The agent's state and how long it has been in it."""
    if row.agent_since is None:
        return row.agent_state
    return f"{row.agent_state} {_age(max(time.time() - row.agent_since, 0.0))}"


def _cells(row: FleetRow) -> list[str]:
    cpu = "-" if row.cpu_percent is None else f"{row.cpu_percent:.1f}%"
    limits = "/".join(x for x in (row.cpu_limit and f"{row.cpu_limit} cpu", row.memory_limit) if x) or "-"
    return [
        row.container,
        _short(row.workspace),
        row.tool,
        _agent(row),
        cpu,
        _size(row.memory_bytes) if row.memory_bytes else "-",
        _size(row.disk_bytes) if row.disk_bytes else "-",
        limits,
        _age(row.uptime_s),
        row.location if row.location not in ("", "none") else row.remote,
    ]


_HEADERS = ["CONTAINER", "WORKSPACE", "TOOL", "STATE", "CPU", "MEMORY", "DISK", "LIMITS", "UPTIME", "WHERE"]


def _plain(found: list[FleetRow]) -> str:
    table = [_HEADERS, *(_cells(r) for r in found)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADERS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    )


@click.command()
@click.option(
    "--once", is_flag=True, help="Print one snapshot and exit (the default when not on a terminal)."
)
@format_option("text", "json", description="Output format (json implies --once).")
@click.option(
    "--sort",
    "sort_key",
    type=click.Choice(["name", "state", "cpu", "memory", "age"]),
    default="name",
    show_default=True,
    help="Sort the sessions by this.",
)
@click.option("--workspace", default="", help="Only the sessions of this workspace (a path prefix).")
@click.pass_obj
async def top(app: App, *, once: bool, fmt: str, sort_key: str, workspace: str) -> None:
    """Every session's state, CPU, memory, disk, limits and uptime, refreshed every second."""
    from coi_async.orchestration.fleet.snapshot import ordered, rows, sample_agents, take_sample

    config = app.config()
    live = not once and fmt == "text" and sys.stdout.isatty()
    async with app.incus() as incus:
        previous = await take_sample(incus, config.container_prefix)
        if not live:
            await anyio.sleep(_ONCE_SAMPLE_GAP_S)
            sample = await take_sample(incus, config.container_prefix)
            agents = await sample_agents(incus, sample, config)
            found = ordered(
                rows(sample, previous, config, agents, remote=app.remote_name()),
                sort_key,
                workspace=workspace,
            )
            if fmt == "json":
                click.echo(msgspec.json.encode(found).decode())
            else:
                click.echo(_plain(found) if found else "No sessions")
            return
        await _live(incus, config, previous, sort_key, workspace, app.remote_name())


async def _live(
    incus: IncusClient, config: Config, previous: Sample, sort_key: str, workspace: str, remote: str
) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from coi_async.cli.terminal import LocalTerminal
    from coi_async.orchestration.fleet.snapshot import ordered, rows, sample_agents, take_sample

    terminal = LocalTerminal()

    def render(found: list[FleetRow]) -> Table:
        table = Table(title=f"coi top: {len(found)} sessions (q quits)", title_justify="left")
        for header in _HEADERS:
            table.add_column(header)
        for row in found:
            table.add_row(*_cells(row))
        return table

    async def quit_on_q(scope: anyio.CancelScope) -> None:
        while True:
            typed = await terminal.read()
            if not typed or b"q" in typed or b"\x03" in typed:
                scope.cancel()
                return

    with terminal.raw(), Live(render([]), console=Console(), auto_refresh=False) as view:
        async with anyio.create_task_group() as tg:
            tg.start_soon(quit_on_q, tg.cancel_scope)
            while True:
                await anyio.sleep(_REFRESH_S)
                sample = await take_sample(incus, config.container_prefix)
                agents = await sample_agents(incus, sample, config)
                found = ordered(
                    rows(sample, previous, config, agents, remote=remote), sort_key, workspace=workspace
                )
                previous = sample
                view.update(render(found), refresh=True)


@click.command()
@click.argument("containers", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every coi session of the project.")
@click.option("--cpu", default=None, help="CPUs the session may use (1, 2, ...; 'none' removes the limit).")
@click.option(
    "--memory", default=None, help="Memory it may use (512MiB, 2GB, 50%; 'none' removes the limit)."
)
@click.pass_obj
async def limit(
    app: App, *, containers: tuple[str, ...], all_: bool, cpu: str | None, memory: str | None
) -> None:
    """Set CPU and memory limits of running sessions, live (shown by `coi top`)."""
    from coi_async.orchestration.fleet.limits import apply_limits, cpu_limit, memory_limit
    from coi_async.orchestration.sessions.listing import prefixed_instances

    if cpu is None and memory is None:
        raise UsageError("nothing to change: give --cpu, --memory or both")
    if all_ and containers:
        raise UsageError("--all cannot be combined with container names")
    if not all_ and not containers:
        raise UsageError("no container names provided - use 'coi list' to see active containers")
    cpu_value = None if cpu is None else cpu_limit(cpu)
    memory_value = None if memory is None else memory_limit(memory)
    config = app.config()
    async with app.incus() as incus:
        if all_:
            names = [i.name for i in await prefixed_instances(incus, config.container_prefix)]
        else:
            known = {i.name for i in await incus.list_instances()}
            unknown = [c for c in containers if c not in known]
            if unknown:
                raise UsageError(f"unknown container '{unknown[0]}'")
            names = list(containers)
        report = await apply_limits(
            incus, names, cpu=cpu_value, memory=memory_value, parallel=config.defaults.parallel
        )
    shown = ", ".join(
        f"{what} {value or 'unlimited'}"
        for what, value in (("cpu", cpu_value), ("memory", memory_value))
        if value is not None
    )
    for result in sorted(report.results, key=lambda r: r.item):
        if result.ok:
            click.echo(f"Limited {result.item}: {shown}")
        else:
            click.echo(f"Failed {result.item}: {result.error}", err=True)
    if report.failed or report.cancelled:
        raise SystemExit(1)


def event_line(event: FleetEvent) -> str:
    """One readable line for an event of `coi events`; where it happened is shown when it is not
    this machine's incusd."""
    where = f" [{event.remote}]" if event.remote != LOCAL else ""
    if event.type == "resync":
        sessions = event.sessions or []
        listed = (
            ", ".join(
                f"{s.container} ({s.status}{', ' + s.agent_state if s.agent_state else ''})" for s in sessions
            )
            or "none"
        )
        said = f"resync: {len(sessions)} sessions: {listed}"
    elif event.type == "egress-refused":
        said = f"egress refused {event.container}: {event.host}:{event.port} ({event.detail})"
    elif event.type == "agent-state":
        message = f": {event.message}" if event.message else ""
        said = f"agent {event.container}: {event.previous or '-'} -> {event.state}{message}"
    elif event.type == "disconnected":
        what = "incusd" if event.remote == LOCAL else f"remote '{event.remote}'"
        said = f"disconnected from {what} ({event.detail}); reconnecting"
    else:
        said = f"{event.type} {event.container} ({_short(event.workspace)})"
    return f"{event.time}{where} {said}"


@click.command()
@format_option("text", "json", description="Output format: a line per event, or NDJSON.")
@click.option(
    "--all-remotes",
    is_flag=True,
    help="Follow local and every remote added with 'coi remote add', all at once.",
)
@click.pass_context
async def events(ctx: click.Context, *, fmt: str, all_remotes: bool) -> None:
    """Follow what happens to the sessions (starts, stops, ...), until Ctrl-C.

    Every (re)connection to an incusd starts with a `resync` event holding every session there as
    it is; each event names the remote it came from.
    """
    from coi_async.cli.app import REMOTE_ANSWER_S
    from coi_async.orchestration.fleet.follow import Source, fleet_events

    app: App = ctx.obj
    # $COI_REMOTE (a default) gives way to --all-remotes; `--remote` said with it contradicts it.
    given = ctx.find_root().get_parameter_source("remote")
    if all_remotes and given == click.core.ParameterSource.COMMANDLINE:
        raise UsageError("--all-remotes follows every remote: it cannot be combined with --remote")
    config = app.config()
    names = app.remote_names() if all_remotes else [app.remote_name()]
    sources = [
        Source(
            remote=name,
            connect=partial(app.incus_of, name),
            egress=name == LOCAL,  # the egress daemon runs beside coi, for local sessions only
            answer_s=None if name == LOCAL else REMOTE_ANSWER_S,
        )
        for name in names
    ]
    async with fleet_events(sources, config) as stream:
        async for event in stream:
            click.echo(msgspec.json.encode(event).decode() if fmt == "json" else event_line(event))


@click.command()
@click.argument("containers", nargs=-1, required=True)
@click.option(
    "--state",
    "state",
    type=click.Choice(["waiting", "idle", "exited"]),
    default=None,
    help="The agent state to wait for (exited: also the container stopped or gone).  [required]",
)
@click.option(
    "--timeout", "timeout_s", type=float, default=None, metavar="S", help="Give up after S seconds (exit 1)."
)
@click.pass_obj
async def wait(app: App, *, containers: tuple[str, ...], state: str | None, timeout_s: float | None) -> None:
    """Wait until each session's agent is in STATE (waiting for input, idle, or exited)."""
    from coi_async.orchestration.fleet.wait import check_known, wait_for_state

    if state is None:
        raise click.UsageError("Missing option '--state' (waiting, idle or exited).")
    if timeout_s is not None and not timeout_s > 0:  # NaN too
        raise UsageError(f"invalid --timeout {timeout_s:g}: seconds, more than 0")
    config = app.config()
    names = list(dict.fromkeys(containers))
    async with app.incus() as incus:
        await check_known(incus, names)
        missing = await wait_for_state(incus, config, names, state, timeout_s=timeout_s)
    if missing:
        click.echo(f"Timed out after {timeout_s:g}s: {', '.join(missing)} not {state}", err=True)
        raise SystemExit(1)
