"""`coi`: the root command group and the error boundary."""

from __future__ import annotations

import os
from typing import Any

import asyncclick as click

from coi_async import __version__
from coi_async.cli.app import App
from coi_async.cli.render import show_error
from coi_async.errors import CoiError

PROJECT_URL = "https://github.com/coi-async/coi-async"


def user_errors(exc: BaseException) -> list[CoiError] | None:
    """The CoiErrors behind `exc` (flattening task-group exception groups), or None for a bug."""
    if isinstance(exc, CoiError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[CoiError] = []
        for inner in exc.exceptions:
            errors = user_errors(inner)
            if errors is None:
                return None
            found.extend(errors)
        return found
    return None


class CoiGroup(click.Group):
    """Turns every CoiError into `Error: ...` on stderr and its exit code; bugs keep their traceback."""

    async def invoke(self, ctx: click.Context) -> Any:
        try:
            return await super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            errors = user_errors(exc)
            app = ctx.obj
            debug = (isinstance(app, App) and app.debug) or os.environ.get("COI_DEBUG") == "1"
            if errors is None or debug:
                raise
            for error in errors:
                show_error(error)
            raise click.exceptions.Exit(max(e.exit_code for e in errors)) from None


@click.group(cls=CoiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-v", "--version", prog_name="coi", message="coi version %(version)s")
@click.option("--debug", is_flag=True, envvar="COI_DEBUG", help="Show full tracebacks for errors.")
@click.option("--project", envvar="COI_INCUS_PROJECT", help="Incus project to work in.")
@click.pass_context
async def cli(ctx: click.Context, *, debug: bool, project: str | None) -> None:
    """coi: AI coding sessions in isolated Incus containers."""
    ctx.obj = App(debug=debug, project=project)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
async def version() -> None:
    """Show the version and the project's address."""
    click.echo(f"coi-async (coi) v{__version__}")
    click.echo(PROJECT_URL)


# Command families live in coi_async.cli.commands, one module each; register them here.
def _register() -> None:
    from coi_async.cli.commands import container

    cli.add_command(container.container)


_register()


def main() -> None:
    cli(prog_name="coi", _anyio_backend="asyncio")
