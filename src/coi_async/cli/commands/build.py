"""`coi build` and `coi build custom`: images from shipped or user recipes, offline-capable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import asyncclick as click
import msgspec

from coi_async.cli.app import App

if TYPE_CHECKING:
    from coi_async.egress import ProxyEvent
    from coi_async.orchestration.images.build import BuildRequest, BuildResult


class StderrBuildReporter:
    """Build progress as plain lines on stderr; the recipe's own output passes through untouched."""

    def __init__(self) -> None:
        self._shown_hosts: set[tuple[str, int]] = set()

    def _line(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def phase_started(self, phase: str, detail: str) -> None:
        self._line(f"==> [{phase}] {detail}")

    def phase_finished(self, phase: str, seconds: float) -> None:
        self._line(f"==> [{phase}] done in {seconds:.1f}s")

    def output(self, data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()

    def note(self, message: str) -> None:
        self._line(f"==> {message}")

    def egress(self, event: ProxyEvent) -> None:
        if event.action == "allowed":
            key = (event.host, event.port)
            if key not in self._shown_hosts:
                self._shown_hosts.add(key)
                self._line(f"==> [egress] allowed {event.host}:{event.port}")
        else:
            self._line(f"==> [egress] {event.action}: {event.detail}")


def _settings(base: str | None, allow_hosts: tuple[str, ...]) -> tuple[str, tuple[str, ...], str]:
    """The base, the allowlist (defaults plus configured plus flags) and the container prefix."""
    # The same loader (and the same errors for a bad config file) as every other command.
    from coi_async.cli.config_loader import load_config
    from coi_async.egress import DEFAULT_ALLOWLIST
    from coi_async.orchestration.images.build import DEBIAN_BASE

    config = load_config()
    chosen = base or config.build.base or DEBIAN_BASE
    extra = [h for entry in allow_hosts for h in entry.split(",") if h.strip()]
    allowlist = tuple(dict.fromkeys([*DEFAULT_ALLOWLIST, *config.build.allowed_hosts, *extra]))
    return chosen, allowlist, config.container_prefix


def _summary(result: BuildResult) -> str:
    order = ["base", "launch", "recipe", "publish", "cleanup"]
    parts = [f"{k} {result.timings[k]:.1f}s" for k in order if k in result.timings]
    return "Build phases: " + ", ".join(parts)


async def _run(app: App, request: BuildRequest) -> BuildResult:
    from coi_async.orchestration.images.build import build_image

    reporter = StderrBuildReporter()
    async with app.incus() as incus:
        result = await build_image(incus, request, reporter)
    if not result.skipped:
        reporter.note(_summary(result))
        reporter.note(f"image {result.version}: {result.size / 1e6:.0f} MB")
    return result


_proxy_port = click.option(
    "--proxy-port",
    type=click.IntRange(0, 65535),
    default=0,
    envvar="COI_BUILD_PROXY_PORT",
    show_default=True,
    help="Host loopback port of the egress proxy (0: any free port).",
)
_allow_host = click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    envvar="COI_BUILD_ALLOW_HOSTS",
    help="Also let the build reach this host (host, host:port or *.domain); repeatable.",
)


@click.group(invoke_without_command=True)
@click.option("--force", is_flag=True, help="Rebuild even if the image exists.")
@click.option(
    "--base",
    envvar="COI_BUILD_BASE",
    help="Base image: a local alias, remote:alias, or 'debian' (built from Debian packages; the default).",
)
@_allow_host
@_proxy_port
@click.pass_context
async def build(
    ctx: click.Context, *, force: bool, base: str | None, allow_hosts: tuple[str, ...], proxy_port: int
) -> None:
    """Build the coi image (reused while its recipe is unchanged)."""
    if ctx.invoked_subcommand is not None:
        return
    from coi_async.orchestration.images.build import coi_request

    app: App = ctx.obj
    chosen, allowlist, prefix = _settings(base, allow_hosts)
    click.echo("Building coi image...")
    request = coi_request(
        base=chosen, force=force, allowlist=allowlist, proxy_port=proxy_port, container_prefix=prefix
    )
    result = await _run(app, request)
    if result.skipped:
        click.echo("Image 'coi' already exists. Use --force to rebuild.")
        click.echo("\nImage already exists. Use --force to rebuild.")
        return
    click.echo("\n Image 'coi' built successfully!")
    click.echo(f"  Version: {result.version}")
    click.echo(f"  Fingerprint: {result.fingerprint}")


@build.command()
@click.argument("name")
@click.option(
    "--script", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Build script."
)
@click.option("--base", default="coi", show_default=True, help="Base image (local alias or remote:alias).")
@click.option("--force", is_flag=True, help="Rebuild even if the image exists.")
@_allow_host
@_proxy_port
@click.pass_obj
async def custom(
    app: App,
    *,
    name: str,
    script: Path,
    base: str,
    force: bool,
    allow_hosts: tuple[str, ...],
    proxy_port: int,
) -> None:
    """Build a custom image NAME by running SCRIPT as root on top of BASE."""
    from coi_async.orchestration.images.build import custom_request

    _, allowlist, prefix = _settings(base, allow_hosts)
    request = custom_request(
        name,
        script,
        base=base,
        force=force,
        allowlist=allowlist,
        proxy_port=proxy_port,
        container_prefix=prefix,
    )
    sys.stderr.write(f"Building custom image '{name}' from '{base}'...\n")
    result = await _run(app, request)
    if result.skipped:
        sys.stderr.write("Image already exists. Use --force to rebuild.\n")
        click.echo(msgspec.json.encode({"alias": name, "skipped": True}).decode())
    else:
        click.echo(msgspec.json.encode({"alias": name, "fingerprint": result.fingerprint}).decode())
