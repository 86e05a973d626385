"""`coi`: the root command group and the error boundary."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any, NoReturn

import asyncclick as click

from coi_async.cli import help as help_text
from coi_async.cli.app import App
from coi_async.cli.render import show_error
from coi_async.errors import coi_errors

PROJECT_URL = "https://github.com/coi-async/coi-async"


def _print_version(ctx: click.Context, *, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    import coi_async

    click.echo(f"coi version {coi_async.__version__}")
    raise click.exceptions.Exit(0)


class OneLineUsageError(click.UsageError):
    """A usage error as one `Error:` line that says where help is, without click's usage dump."""

    def show(self, file: Any = None) -> None:
        where = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"Error: {self.format_message()}{where}", file=file, err=file is None)


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return exc
    return OneLineUsageError(exc.format_message(), exc.ctx)


def default_to_shell(group: click.Group, args: list[str]) -> list[str]:
    """`coi [root options] --shell-flag ...` means `coi [root options] shell --shell-flag ...`.

    Plain `coi` runs shell too (see `cli`); a first word that is not a command stays an unknown
    command, as in the reference.
    """
    takes_value = {o for p in group.params if isinstance(p, click.Option) and not p.is_flag for o in p.opts}
    own = {o for p in group.params for o in p.opts} | {"-h", "--help"}
    i = 0
    while i < len(args):
        word = args[i]
        name = word.split("=", 1)[0]
        if name not in own:
            break
        i += 2 if word in takes_value else 1
    if i < len(args) and args[i].startswith("-") and args[i] != "--":
        return [*args[:i], "shell", *args[i:]]
    return args


# Every command but `version`, by name: its module in coi_async.cli.commands (one per command
# family) and its attribute there. A module is imported only when one of its commands runs or
# shows its help, so each command pays for its own imports only.
COMMANDS: dict[str, tuple[str, str]] = {
    "shell": ("shell", "shell"),
    "attach": ("shell", "attach"),
    "run": ("run", "run"),
    "list": ("sessions", "list_"),
    "info": ("sessions", "info"),
    "persist": ("sessions", "persist"),
    "shutdown": ("bulk", "shutdown"),
    "kill": ("bulk", "kill"),
    "clean": ("bulk", "clean"),
    "fork": ("fork", "fork"),
    "snapshot": ("snapshot", "snapshot"),
    "top": ("fleet", "top"),
    "limit": ("fleet", "limit"),
    "events": ("fleet", "events"),
    "wait": ("fleet", "wait"),
    "build": ("build", "build"),
    "container": ("container", "container"),
    "file": ("file", "file"),
    "image": ("image", "image"),
    "images": ("image", "images"),
    "tmux": ("tmux", "tmux"),
    "egress": ("egress", "egress"),
    "network": ("network", "network"),
    "pool": ("pool", "pool"),
    "remote": ("remote", "remote"),
    "trust": ("trust", "trust"),
    "untrust": ("trust", "untrust"),
    "completion": ("completion", "completion"),
}


class CoiGroup(click.Group):
    """Turns every CoiError into `Error: ...` on stderr and its exit code; bugs keep their traceback.

    Its commands (COMMANDS) are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute = COMMANDS[cmd_name]
            command: click.Command = getattr(
                importlib.import_module(f"coi_async.cli.commands.{module}"), attribute
            )
            help_text.install(command)
            self.commands[cmd_name] = command
        return self.commands.get(cmd_name)

    async def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return await super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    async def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return await super().parse_args(ctx, default_to_shell(self, args))

    async def invoke(self, ctx: click.Context) -> Any:
        try:
            return await super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            errors = coi_errors(exc)
            app = ctx.obj
            debug = (isinstance(app, App) and app.debug) or os.environ.get("COI_DEBUG") == "1"
            if errors is None or debug:
                raise
            # Sibling tasks often hit the same cause (e.g. incusd is down): say it once.
            shown: set[str] = set()
            for error in errors:
                if str(error) not in shown:
                    shown.add(str(error))
                    show_error(error)
            raise click.exceptions.Exit(max(e.exit_code for e in errors)) from None


@click.group(
    cls=CoiGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "-v",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _param, value: _print_version(ctx, value=value),
    help="Show the version and exit.",
)
@click.option("--debug", is_flag=True, envvar="COI_DEBUG", help="Show full tracebacks for errors.")
@click.option("--project", envvar="COI_INCUS_PROJECT", help="Incus project to work in.")
@click.option(
    "--remote",
    envvar="COI_REMOTE",
    metavar="NAME",
    help="Work on this remote's incusd (see 'coi remote'; default: [incus] remote, else local).",
)
@click.pass_context
async def cli(ctx: click.Context, *, debug: bool, project: str | None, remote: str | None) -> None:
    """coi: AI coding sessions in isolated Incus containers, a compatible implementation of
    code-on-incus (`coi`). With no command: `coi shell`."""
    ctx.obj = App(debug=debug, project=project, remote=remote)
    if ctx.invoked_subcommand is None:
        from coi_async.cli.commands.shell import shell

        await ctx.invoke(shell)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
async def version() -> None:
    """Show the version and the project's address."""
    import coi_async

    click.echo(f"coi-async (coi) v{coi_async.__version__}")
    click.echo(PROJECT_URL)


help_text.install(cli)


def main() -> None:
    try:
        cli(prog_name="coi", _anyio_backend="asyncio")
    except SystemExit as done:
        _exit_now(done.code)
    _exit_now(0)


def _exit_now(code: object) -> NoReturn:
    """Exit without the interpreter's teardown of every module and object (~0.1 s, a tenth of a
    `coi run`): everything coi had to do is done and its output is flushed here."""
    if isinstance(code, str):
        sys.stderr.write(f"{code}\n")
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0)
