"""`coi shell` (also plain `coi`) and `coi attach`: interactive sessions in a container's tmux."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._options import network_option, tool_option, workspace_option
from coi_async.errors import CoiError, UsageError

if TYPE_CHECKING:
    from coi_async.config import Config, Mount

_RESUME_HELP = "Resume a saved session: the latest of this workspace, or --resume=ID."


def _prepare(
    app: App, workspace: str, mounts: tuple[str, ...], config: Config
) -> tuple[str, tuple[Mount, ...], str]:
    """The absolute workspace (checked), the extra mounts (validated, host dirs made), the home."""
    from coi_async.cli.workspace import session_workspace

    ws, extra = session_workspace(app, workspace, mounts, config)
    return ws, extra, os.path.expanduser("~")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, required=False)
@workspace_option()
@click.option("--slot", type=int, default=0, show_default=True, help="Slot for parallel sessions (0 = auto).")
@click.option("--persistent", is_flag=True, default=None, help="Keep the container between sessions.")
@click.option("--resume", is_flag=False, flag_value="auto", default=None, help=_RESUME_HELP)
@click.option(
    "--continue", "continue_", is_flag=False, flag_value="auto", default=None, help="Alias for --resume."
)
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Environment variable.")
@click.option("--mount", "mounts", multiple=True, metavar="HOST:CONTAINER", help="Extra mount (repeatable).")
@click.option("--image", default=None, help="Image to use (default: defaults.image from config).")
@click.option("--profile", default=None, help="Apply [profiles.NAME] from config.")
@tool_option("AI tool of the session: claude, codex, gemini or opencode (default: tool.name).")
@network_option()
@click.option(
    "--target", default="", metavar="MEMBER", help="On a cluster: the member a new container goes to."
)
@click.option("--background", is_flag=True, help="Start the tool in a detached tmux session and return.")
@click.option("--debug", is_flag=True, help="Run bash instead of the tool.")
@click.option(
    "--tmux",
    "use_tmux",
    type=click.BOOL,
    is_flag=False,
    flag_value=True,
    default=True,
    show_default=True,
    help="Run the tool in tmux (--tmux=false runs it directly).",
)
@click.pass_obj
async def shell(
    app: App,
    *,
    args: tuple[str, ...],
    workspace: str,
    slot: int,
    persistent: bool | None,
    resume: str | None,
    continue_: str | None,
    env_pairs: tuple[str, ...],
    mounts: tuple[str, ...],
    image: str | None,
    profile: str | None,
    network: str | None,
    tool: str | None,
    target: str,
    background: bool,
    debug: bool,
    use_tmux: bool,
) -> None:
    """Start an interactive AI coding session in a container (the default command).

    Ephemeral (the default): the container is deleted once it stops (`sudo poweroff` inside);
    `exit` or a detach (Ctrl-b d) keeps it running for `coi attach`. The session data is saved
    on every way out, so `--resume` continues it in a fresh container. Persistent
    (`--persistent`): the container, with everything installed in it, is kept and reused by the
    workspace's next session in its slot.
    """
    from coi_async.cli import session_view
    from coi_async.cli.commands.run import parse_env
    from coi_async.cli.terminal import LocalTerminal
    from coi_async.orchestration.sessions.request import ShellRequest
    from coi_async.orchestration.sessions.shell import run_shell

    if args:
        raise UsageError(
            f"unexpected argument '{args[0]}' - did you mean --resume={args[0]}? "
            "(note: use = when specifying session ID)"
        )
    from coi_async.config import apply_flags

    # `persistent` stays out of the config here: an explicit flag must win over a resumed
    # session's mode, and only the flow can tell the two apart.
    config = apply_flags(app.config(profile=profile, image=image), network=network, tool=tool)
    ws, extra, home = _prepare(app, workspace, mounts, config)
    request = ShellRequest(
        workspace=ws,
        slot=slot,
        persistent=persistent,
        resume=continue_ or resume,
        env=parse_env(env_pairs),
        mounts=extra,
        background=background,
        debug=debug,
        use_tmux=use_tmux,
        term=os.environ.get("TERM"),
        host_uid=os.getuid(),
        host_gid=os.getgid(),
        host_home=home,
        use_dummy=os.environ.get("COI_USE_DUMMY") == "1",
        target=target,
    )
    from coi_async.orchestration.sessions.placement import check_placement

    async with app.incus() as incus:
        await check_placement(incus, policy=config.placement.policy, target=target)
        code = await run_shell(incus, config, request, emit=session_view.show, terminal=LocalTerminal())
    if code:
        raise click.exceptions.Exit(code)


def _attach_workspace(app: App, workspace: str, slot: int) -> str:
    """The workspace of `attach --slot`: over a remote, its path on that server."""
    from coi_async.naming import absolute_workspace

    if not app.is_remote() or not slot:
        # Without --slot the workspace chooses nothing.
        return absolute_workspace(workspace, os.getcwd())
    from coi_async.remotes import remote_workspace

    return remote_workspace(
        workspace,
        remote=app.remote_name(),
        root=app.remote_workspace_root(),
        home=os.path.expanduser("~"),
        cwd=os.getcwd(),
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("container", required=False)
@click.option("--bash", "use_bash", is_flag=True, help="Open bash instead of the tmux session.")
@click.option("--slot", type=int, default=0, show_default=True, help="Attach to this slot of the workspace.")
@click.option("-w", "--workspace", default=".", show_default=True, help="Workspace of --slot.")
@tool_option("Only sessions of this AI tool (claude, codex, gemini or opencode).")
@click.pass_obj
async def attach(
    app: App, *, container: str | None, use_bash: bool, slot: int, workspace: str, tool: str | None
) -> None:
    """Attach to a running session (by name, by --slot, or the only one)."""
    from coi_async.cli import session_view
    from coi_async.cli.terminal import LocalTerminal
    from coi_async.config import apply_flags
    from coi_async.orchestration.network.session import revive_daemon
    from coi_async.orchestration.sessions.attach import AttachList, attach_session, choose_attach_target
    from coi_async.orchestration.sessions.request import Outcome

    config = apply_flags(app.config(), tool=tool)
    # The session attached to has no network while its egress daemon is down (attaching works
    # without it, so a daemon that will not start does not stop the attach).
    if not app.is_remote():
        with contextlib.suppress(CoiError):
            await revive_daemon()
    async with app.incus() as incus:
        choice = await choose_attach_target(
            incus,
            config,
            workspace=_attach_workspace(app, workspace, slot),
            slot=slot,
            name=container,
            tool=tool or "",
        )
        if isinstance(choice, AttachList):
            if not choice.running:
                click.echo("No active sessions")
                return
            click.echo("Active sessions:")
            for i, name in enumerate(choice.running, 1):
                click.echo(f"  {i}. {name}")
            click.echo("\nUse: coi attach <container-name>")
            return
        suffix = f" (slot {slot})" if slot > 0 else ""
        click.echo(f"Attaching to {choice.container}{suffix}...")
        outcome = await attach_session(
            incus,
            config,
            choice,
            use_bash=use_bash,
            term=os.environ.get("TERM"),
            emit=session_view.show,
            terminal=LocalTerminal(),
        )
    if outcome is Outcome.NO_TMUX:
        click.echo("\nNo tmux session found in container.")
        click.echo("The container is still running. To get a shell, use:")
        click.echo(f"  coi attach {choice.container} --bash")
        raise click.exceptions.Exit(1)
