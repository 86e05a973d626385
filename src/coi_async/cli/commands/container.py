"""`coi container ...`: low-level container operations, for scripts and power users."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._lowlevel import QUICK_S, START_S, STOP_S, connected, say
from coi_async.cli.commands.run import parse_env
from coi_async.errors import CoiError, NotFoundError, UsageError

EXEC_FORMATS = ("json", "raw")


@click.group()
async def container() -> None:
    """Low-level container operations."""


def _on_container(force: str | None = None) -> Callable[[Callable[..., Any]], click.Command]:
    """Register `coi container COMMAND NAME`; `force`, when given, is the help of its --force flag."""

    def register(fn: Callable[..., Any]) -> click.Command:
        command = click.pass_obj(fn)
        if force is not None:
            command = click.option("--force", is_flag=True, help=force)(command)
        return container.command()(click.argument("name")(command))

    return register


@container.command()
@click.argument("image")
@click.argument("name")
@click.option("--ephemeral", is_flag=True, help="Delete the container when it stops.")
@click.pass_obj
async def launch(app: App, image: str, name: str, *, ephemeral: bool) -> None:
    """Create and start container NAME from the local image IMAGE (Docker-in-container ready)."""
    from coi_async.orchestration.containers import commands as containers

    async with connected(app, START_S, f"launching {name}") as incus:
        await containers.launch(incus, image, name, ephemeral=ephemeral)
    say(f"Container {name} launched from {image}")


@_on_container()
async def start(app: App, name: str) -> None:
    """Start a stopped container."""
    from coi_async.orchestration.containers import commands as containers

    async with connected(app, START_S, f"starting {name}") as incus:
        await containers.start(incus, name)
    say(f"Container {name} started")


@_on_container(force="Kill it at once instead of asking it to shut down.")
async def stop(app: App, name: str, *, force: bool) -> None:
    """Stop a running container (gracefully, unless --force)."""
    from coi_async.orchestration.containers import commands as containers

    async with connected(app, QUICK_S if force else STOP_S, f"stopping {name}") as incus:
        await containers.stop(incus, name, force=force)
    say(f"Container {name} stopped")


@_on_container(force="Stop it first if it is running.")
async def delete(app: App, name: str, *, force: bool) -> None:
    """Delete a container (a running one only with --force)."""
    from coi_async.orchestration.containers import commands as containers

    async with connected(app, QUICK_S * 2, f"deleting {name}") as incus:
        await containers.delete(incus, name, force=force)
    say(f"Container {name} deleted")


def _write_to(stream: BinaryIO) -> Callable[[bytes], Awaitable[None]]:
    async def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


@container.command("exec")
@click.argument("name")
@click.argument("command", nargs=-1, required=True)
@click.option("--user", type=int, default=None, help="Run as this uid (default: root).")
@click.option(
    "--group", type=int, default=None, help="Run with this gid (default: the --user uid, else root)."
)
@click.option("--env", "env_pairs", multiple=True, metavar="K=V", help="Set a variable (repeatable).")
@click.option("--cwd", default="/workspace", show_default=True, help="Working directory in the container.")
@click.option("--capture", is_flag=True, help="Collect the output and print it as --format says.")
@click.option(
    "--format",
    "fmt",
    default=None,
    metavar="json|raw",
    help="With --capture: json (default) prints {exit_code, stderr, stdout}; raw prints stdout "
    "as it is and exits with the command's code.",
)
@click.pass_obj
async def exec_(
    app: App,
    name: str,
    command: tuple[str, ...],
    *,
    user: int | None,
    group: int | None,
    env_pairs: tuple[str, ...],
    cwd: str,
    capture: bool,
    fmt: str | None,
) -> None:
    """Run COMMAND in container NAME: coi container exec NAME [OPTIONS] -- COMMAND...

    Without --capture the command's output goes to stderr and a failure exits 1.
    """
    if fmt is not None and not capture:
        raise UsageError("--format flag requires --capture flag")
    fmt = fmt or "json"
    if fmt not in EXEC_FORMATS:
        raise UsageError(f"invalid format '{fmt}': must be 'json' or 'raw'")
    env = parse_env(env_pairs)
    uid = user or 0
    gid = group if group is not None else uid
    argv = list(command)
    from coi_async.orchestration.containers.commands import container_errors

    async with app.incus() as incus:
        with container_errors(name):
            if capture and fmt == "json":
                result = await incus.exec(name, argv, env=env, user=uid, group=gid, cwd=cwd)
                import msgspec

                payload = {
                    "exit_code": result.exit_code,
                    "stderr": result.stderr.decode(errors="replace"),
                    "stdout": result.stdout.decode(errors="replace"),
                }
                click.echo(msgspec.json.encode(payload).decode())
                return
            # Streamed as it comes, so a long command shows progress and never fills memory.
            out = sys.stdout.buffer if capture else sys.stderr.buffer
            code = await incus.exec_stream(
                name,
                argv,
                on_stdout=_write_to(out),
                on_stderr=_write_to(sys.stderr.buffer),
                env=env,
                user=uid,
                group=gid,
                cwd=cwd,
            )
    if capture:  # raw
        raise click.exceptions.Exit(code)
    if code != 0:
        raise CoiError(f"command failed: exit status {code}")


@_on_container()
async def exists(app: App, name: str) -> None:
    """Exit 0 if the container exists, 1 if not."""
    async with app.incus() as incus:
        found = await incus.instance_exists(name)
    sys.exit(0 if found else 1)


@_on_container()
async def running(app: App, name: str) -> None:
    """Exit 0 if the container is running, 1 if not."""
    async with app.incus() as incus:
        try:
            up = (await incus.get_instance(name)).running
        except NotFoundError:
            up = False
    sys.exit(0 if up else 1)


@container.command()
@click.argument("name")
@click.argument("device")
@click.argument("source")
@click.argument("path")
@click.option(
    "--shift/--no-shift",
    default=True,
    show_default=True,
    help="Map ids on the mount so container uids own the files (idmapped mount).",
)
@click.pass_obj
async def mount(app: App, name: str, device: str, source: str, path: str, *, shift: bool) -> None:
    """Mount host directory SOURCE at PATH in container NAME, as disk device DEVICE."""
    from coi_async.orchestration.containers import commands as containers

    if not path.startswith("/"):
        raise UsageError(f"container path must be absolute: '{path}'")
    source = os.path.abspath(source)  # noqa: ASYNC240 - a getcwd, no disk access
    async with connected(app, QUICK_S, f"mounting {source} in {name}") as incus:
        await containers.add_disk(incus, name, device, source, path, shift=shift)
    say(f"Disk mounted: {source} -> {name}:{path}")
