"""`coi build` and `coi build custom`: images from shipped or user recipes, offline-capable."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import asyncclick as click
import msgspec

from coi_async.cli.app import App

if TYPE_CHECKING:
    from coi_async.orchestration.events import Event, Note
    from coi_async.orchestration.images.request import BuildRequest, BuildResult

# What each phase's line says about its detail (see images.build.PHASES).
_PHASE_LINES = {
    "base": "base image '{detail}'",
    "launch": "build container {detail}",
    "recipe": "{detail} as root",
    "publish": "stop, publish uncompressed, move the alias",
}


def note_text(event: Note) -> str | None:
    """The sentence for one of a build's notes (None: a note shown otherwise, or not at all)."""
    from coi_async.orchestration.images import base as image_base
    from coi_async.orchestration.images import build as image_build
    from coi_async.orchestration.images import container as build_container

    sentences: dict[str, Callable[[dict[str, str]], str | None]] = {
        image_build.NOTE_RECIPE_CHANGED: lambda v: (
            f"the recipe of '{v['alias']}' changed since it was built; rebuilding"
        ),
        image_build.NOTE_LAYERS_REUSED: lambda v: (
            f"steps unchanged since they were built, reused: {v['steps']}"
        ),
        build_container.NOTE_NIC: lambda _: (
            "the build container has a network interface; the recipe uses it directly"
        ),
        build_container.NOTE_EGRESS_PROXY: lambda v: (
            f"no network interface: egress through the host proxy {v['url']} (allowed: {v['allowed']})"
        ),
        build_container.NOTE_CLEANUP_FAILED: lambda v: (
            f"could not delete build container {v['container']}: {v['error']}"
        ),
        image_base.NOTE_BASE_UP_TO_DATE: lambda v: (
            f"base image {v['alias']} is up to date ({v['fingerprint'][:12]})"
        ),
        image_base.NOTE_BASE_BUILDING: lambda v: (
            f"building base image {v['alias']} from Debian packages ({v['suite']}, {v['mirror']})"
        ),
        image_base.NOTE_BASE_STEP_TOOK: lambda v: f"{v['step']} took {float(v['seconds']):.1f}s",
        image_base.NOTE_BASE_IMPORTING: lambda v: f"importing {int(v['size']) / 1e6:.0f} MB as {v['alias']}",
        build_container.NOTE_EGRESS: lambda _: None,  # StderrBuildView shows these, once a host
    }
    sentence = sentences.get(event.kind)
    if sentence is None:
        # A note without words yet: shown plainly rather than lost.
        return " ".join([event.kind, *(f"{k}={val}" for k, val in event.values.items())])
    return sentence(event.values)


class StderrBuildView:
    """Build progress as plain lines on stderr; the recipe's own output passes through untouched.

    An `events.Emit`: phases, output and notes of `images.build` become the lines below.
    """

    def __init__(self) -> None:
        self._shown_hosts: set[tuple[str, str]] = set()

    def line(self, text: str) -> None:
        sys.stderr.write(f"==> {text}\n")
        sys.stderr.flush()

    def __call__(self, event: Event) -> None:
        from coi_async.orchestration.events import Note, Output, StepFinished, StepStarted
        from coi_async.orchestration.images.container import NOTE_EGRESS

        if isinstance(event, StepStarted):
            text = _PHASE_LINES.get(event.step, "{detail}").format(detail=event.detail)
            self.line(f"[{event.step}] {text}")
        elif isinstance(event, StepFinished):
            self.line(f"[{event.step}] done in {event.seconds:.1f}s")
        elif isinstance(event, Output):
            sys.stderr.buffer.write(event.data)
            sys.stderr.buffer.flush()
        elif isinstance(event, Note):
            if event.kind == NOTE_EGRESS:
                self._egress(event)
            else:
                sentence = note_text(event)
                if sentence is not None:
                    self.line(sentence)

    def _egress(self, event: Note) -> None:
        v = event.values
        if v.get("action") == "allowed":
            key = (v.get("host", ""), v.get("port", ""))
            if key not in self._shown_hosts:
                self._shown_hosts.add(key)
                self.line(f"[egress] allowed {key[0]}:{key[1]}")
        else:
            self.line(f"[egress] {v.get('action', '')}: {v.get('detail', '')}")


def _settings(
    base: str | None, allow_hosts: tuple[str, ...]
) -> tuple[str, tuple[str, ...], str, tuple[str, ...]]:
    """The base, the allowlist (defaults plus configured plus flags), the container prefix and
    the configured tools."""
    # The same loader (and the same errors for a bad config file) as every other command.
    from coi_async.cli.config_loader import load_config
    from coi_async.egress import DEFAULT_ALLOWLIST
    from coi_async.orchestration.images.request import DEBIAN_BASE

    config = load_config()
    chosen = base or config.build.base or DEBIAN_BASE
    extra = [h for entry in allow_hosts for h in entry.split(",") if h.strip()]
    allowlist = tuple(dict.fromkeys([*DEFAULT_ALLOWLIST, *config.build.allowed_hosts, *extra]))
    return chosen, allowlist, config.container_prefix, config.build.tools


def _summary(result: BuildResult) -> str:
    order = ["base", "launch", "recipe", "publish", "cleanup"]
    parts = [f"{k} {result.timings[k]:.1f}s" for k in order if k in result.timings]
    return "Build phases: " + ", ".join(parts)


async def _run(app: App, request: BuildRequest) -> BuildResult:
    from coi_async.orchestration.images.build import build_image

    view = StderrBuildView()
    async with app.incus() as incus:
        result = await build_image(incus, request, view)
    if not result.skipped:
        view.line(_summary(result))
        view.line(f"image {result.version}: {result.size / 1e6:.0f} MB")
    return result


_proxy_port = click.option(
    "--proxy-port",
    type=click.IntRange(0, 65535),
    default=0,
    envvar="COI_BUILD_PROXY_PORT",
    show_default=True,
    help="Port of the egress proxy on the build container's loopback (0: 3128).",
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
@click.option(
    "--tools",
    default=None,
    metavar="NAME,...",
    help="AI tools to install from the npm registry: claude, codex, gemini, opencode (default: build.tools).",
)
@_allow_host
@_proxy_port
@click.pass_context
async def build(
    ctx: click.Context,
    *,
    force: bool,
    base: str | None,
    tools: str | None,
    allow_hosts: tuple[str, ...],
    proxy_port: int,
) -> None:
    """Build the coi image (reused while its recipe is unchanged)."""
    if ctx.invoked_subcommand is not None:
        return
    from coi_async.orchestration.images.request import coi_request

    app: App = ctx.obj
    chosen, allowlist, prefix, configured = _settings(base, allow_hosts)
    wanted = tuple(t.strip() for t in tools.split(",") if t.strip()) if tools is not None else configured
    request = coi_request(  # an unknown tool is a ConfigError naming it, before anything is made
        base=chosen,
        tools=wanted,
        force=force,
        allowlist=allowlist,
        proxy_port=proxy_port,
        container_prefix=prefix,
    )
    click.echo("Building coi image...")
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
    from coi_async.orchestration.images.request import custom_request

    _, allowlist, prefix, _tools = _settings(base, allow_hosts)
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
