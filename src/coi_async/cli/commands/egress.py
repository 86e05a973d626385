"""`coi egress serve|status|stop`: the host process every session's network goes through."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import asyncclick as click

from coi_async.cli.commands._options import format_option
from coi_async.errors import EgressDaemonRunningError, EgressError

if TYPE_CHECKING:
    from coi_async.config import Config
    from coi_async.orchestration.events import Event
    from coi_async.orchestration.network.registry import Registration

# A daemon started on demand ends after this long without sessions (the next session that needs
# one starts it again, while its container is made).
ON_DEMAND_IDLE_S = 30.0

_DAEMON_LINES = {
    "egress.serving": "egress daemon serving {root} (pid {pid})",
    "egress.policy-error": "{item}: keeping the last good policy: {error}",
    "egress.idle-exit": "no sessions for {seconds}s; exiting",
    "egress.signal": "signal {signal}; exiting",
    "egress.stopped": "egress daemon stopped",
    "egress.advertised": "serving the sessions launched over a remote onto {member}",
    "egress.advert-failed": "could not advertise this daemon for {member} yet: {error}",
}


def _daemon_view(event: Event) -> None:
    """The daemon's notes as timestamped lines on stderr (its log when started on demand)."""
    import time

    from coi_async.orchestration.events import Note

    if not isinstance(event, Note):
        return
    template = _DAEMON_LINES.get(event.kind, event.kind)
    try:
        text = template.format_map({"item": event.item, **event.values})
    except (KeyError, ValueError):
        text = template
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
    sys.stderr.flush()


def _session_config(registration: Registration) -> Config:
    """A session's config as the coi that started it would read it now."""
    from coi_async.cli.config_loader import load_config

    return load_config(
        profile=registration.profile or None,
        cwd=registration.cwd,
        home=registration.home,
        env=registration.env,
    )


@click.group()
async def egress() -> None:
    """The egress daemon: sessions reach the network only through it."""


@egress.command()
@click.option("--on-demand", is_flag=True, hidden=True, help="Started by coi: exit when idle.")
@click.option(
    "--idle-exit", "idle_exit_s", type=float, default=None, help="Exit after S seconds without sessions."
)
async def serve(*, on_demand: bool, idle_exit_s: float | None) -> None:
    """Run the egress daemon in the foreground (coi starts it by itself when needed)."""
    from coi_async.incus import IncusClient
    from coi_async.orchestration.network.paths import EgressPaths
    from coi_async.orchestration.network.plan import may_listen_inside
    from coi_async.orchestration.network.serve import serve_daemon

    paths = EgressPaths.for_environment()
    idle = idle_exit_s if idle_exit_s is not None else (ON_DEMAND_IDLE_S if on_demand else None)
    try:
        # Not app.incus(): the daemon serves every project, and no config file may stop it.
        async with IncusClient.connect() as incus:
            await serve_daemon(
                paths,
                incus,
                _session_config,
                idle_exit_s=idle,
                lock_wait_s=5.0 if on_demand else 0.0,
                # One an operator started also serves what other coi processes launch here.
                serve_members=not on_demand,
                inside=may_listen_inside(),
                emit=_daemon_view,
            )
    except EgressDaemonRunningError:
        if on_demand:
            return  # another coi started one first: that one serves
        raise


def status_lines(reply: dict[str, Any]) -> list[str]:
    lines = [
        f"Egress daemon: running (pid {reply.get('pid')}, up {reply.get('uptime_s')}s)",
        f"  Directory: {reply.get('root')}",
        f"  Memory: {int(reply.get('rss_kb', 0)) / 1024:.1f} MB, CPU: {reply.get('cpu_s')}s",
    ]
    sessions = reply.get("sessions") or []
    lines.append(f"  Sessions: {len(sessions)}")
    lines.extend(
        f"    {s['container']} ({s['project']}): {s['mode']}, {_way(s)}, {s['active']} open, "
        f"{s['allowed']} allowed, {s['refused']} refused, {s['failed'] + s['malformed']} failed"
        for s in sessions
    )
    return lines


def _way(session: dict[str, Any]) -> str:
    if session.get("way") != "inside":
        return "via proxy device"
    if session.get("inside"):
        return "listening inside"
    return f"not listening inside: {session.get('inside_error') or 'container not running'}"


@egress.command()
@format_option("text", "json", description="Output format.")
async def status(*, fmt: str) -> None:
    """Show whether the daemon runs, and what it serves (exit 1 when it does not run)."""
    import msgspec

    from coi_async.egress import control
    from coi_async.orchestration.network.paths import EgressPaths

    paths = EgressPaths.for_environment()
    try:
        reply = await control.call(str(paths.control), "status", within_s=5)
    except EgressError:
        if fmt == "json":
            click.echo(msgspec.json.encode({"running": False}).decode())
        else:
            click.echo("Egress daemon: not running")
        raise click.exceptions.Exit(1) from None
    if fmt == "json":
        click.echo(msgspec.json.encode({"running": True, **reply}).decode())
        return
    click.echo("\n".join(status_lines(reply)))


@egress.command()
async def stop() -> None:
    """Stop the daemon; sessions lose their network until a coi command starts it again."""
    from coi_async.orchestration.network.daemon import stop_daemon
    from coi_async.orchestration.network.paths import EgressPaths

    if await stop_daemon(EgressPaths.for_environment()):
        click.echo("Egress daemon stopped")
    else:
        click.echo("Egress daemon was not running")
