"""`coi run -- COMMAND...`: run one command in a fresh container."""

from __future__ import annotations

import contextlib
import os
import sys

import anyio
import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._options import network_option, tool_option, workspace_option
from coi_async.errors import CoiError, UsageError


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def exit_status(code: int) -> str:
    return "Command completed successfully" if code == 0 else f"Command exited with code {code}"


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    """`-e KEY=VALUE` pairs (values may contain commas and `=`: no splitting, unlike the reference)."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid environment variable '{pair}': expected KEY=VALUE")
        env[key] = value
    return env


async def _write(stream: int, data: bytes) -> None:
    out = sys.stdout.buffer if stream == 1 else sys.stderr.buffer
    out.write(data)
    out.flush()


@click.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@workspace_option()
@click.option(
    "--slot", type=int, default=None, help="Slot to use, 1..defaults.max_slots (default: first free)."
)
@click.option("--image", default=None, help="Image to use (default: defaults.image from config).")
@click.option("--persistent", is_flag=True, default=None, help="Keep (stop) the container afterwards.")
@click.option("--profile", default=None, help="Apply [profiles.NAME] from config.")
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Environment variable.")
@click.option("--mount", "mounts", multiple=True, metavar="HOST:CONTAINER", help="Extra mount (repeatable).")
@click.option(
    "--target", default="", metavar="MEMBER", help="On a cluster: the member the container goes to."
)
@click.option("--timeout", "timeout_s", type=float, default=None, help="Give up after this many seconds.")
@tool_option("AI tool of the session: claude, codex, gemini or opencode (default: tool.name).")
@network_option()
@click.pass_obj
async def run(
    app: App,
    *,
    command: tuple[str, ...],
    timeout_s: float | None,
    slot: int | None,
    workspace: str,
    mounts: tuple[str, ...],
    env_pairs: tuple[str, ...],
    profile: str | None,
    image: str | None,
    persistent: bool | None,
    network: str | None,
    tool: str | None,
    target: str,
) -> None:
    """Run COMMAND in a fresh container as the code user in /workspace; exit with its code.

    Use `--` before the command: coi run -- sh -c 'echo hi'. Ephemeral (the default): the
    container is deleted when the command ends. Persistent (`--persistent`): it is stopped and
    kept, to be reused.
    """
    from coi_async.cli import session_view
    from coi_async.cli.workspace import session_workspace
    from coi_async.config import apply_flags
    from coi_async.orchestration.interrupts import interruptible
    from coi_async.orchestration.sessions.run import RunRequest, run_command
    from coi_async.slots import validate_slot

    config = apply_flags(
        app.config(profile=profile, image=image, persistent=persistent), network=network, tool=tool
    )
    if slot is not None:
        validate_slot(slot, max_slots=config.defaults.max_slots)
    ws, extra = session_workspace(app, workspace, mounts, config)
    request = RunRequest(
        workspace=ws,
        argv=command,
        env=parse_env(env_pairs),
        slot=slot or 0,
        mounts=extra,
        host_uid=os.getuid(),
        host_gid=os.getgid(),
        target=target,
    )

    async def out(data: bytes) -> None:
        await _write(1, data)

    async def err(data: bytes) -> None:
        await _write(2, data)

    code: int | None = None
    from coi_async.orchestration.sessions.placement import check_placement

    async with app.incus() as incus, interruptible() as interrupt:
        await check_placement(incus, policy=config.placement.policy, target=target)
        with interrupt.scope:
            try:
                with anyio.fail_after(timeout_s) if timeout_s else contextlib.nullcontext():
                    code = await run_command(
                        incus, config, request, on_stdout=out, on_stderr=err, emit=session_view.show
                    )
            except TimeoutError:
                raise CoiError(
                    f"the command did not finish within {timeout_s:g} s; the container was removed"
                ) from None
    if interrupt.signum is not None:
        _say("\nInterrupted; the container was removed")
        raise click.exceptions.Exit(interrupt.exit_code)
    assert code is not None
    _say("\n" + exit_status(code))
    raise click.exceptions.Exit(code)
