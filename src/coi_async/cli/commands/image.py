"""`coi image ...` (and the older `coi images`): list, publish, delete and clean up images."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._lowlevel import PUBLISH_S, QUICK_S, connected, say
from coi_async.cli.commands._options import format_option
from coi_async.errors import CoiError, UsageError

if TYPE_CHECKING:
    from coi_async.incus.models import Image

# The image `coi shell` uses unless told otherwise.
DEFAULT_IMAGE = "coi"


def human_size(size: int) -> str:
    """Bytes as `12.3MB` (powers of 1024), the reference's format."""
    if size < 1024:
        return f"{size}B"
    value, unit = float(size), "B"
    for unit in "KMGTPE":  # noqa: B007 - the last unit is the answer
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f}{unit}B"


def short_date(stamp: str) -> str:
    """An RFC 3339 time from incusd as local `2006-01-02 15:04`."""
    try:
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return stamp


def matching(image: Image, prefix: str) -> list[str]:
    return sorted(a for a in image.alias_names if a.startswith(prefix))


async def _list(app: App, *, show_all: bool, prefix: str | None, fmt: str) -> None:
    async with connected(app, QUICK_S, "listing images") as incus:
        images = await incus.list_images()
    images.sort(key=lambda i: (matching(i, "")[:1] or ["\uffff"], i.fingerprint))
    if fmt == "json":
        import msgspec

        entries = [
            {
                "fingerprint": image.fingerprint,
                "aliases": matching(image, prefix or ""),
                "size": image.size,
                "created_at": image.created_at,
            }
            for image in images
            if matching(image, prefix or "") or (show_all and not prefix)
        ]
        click.echo(msgspec.json.encode(entries).decode())
        return
    lines = _prefix_table(images, prefix) if prefix else _overview(images, show_all=show_all)
    click.echo("\n".join(lines))


def _prefix_table(images: list[Image], prefix: str) -> list[str]:
    rows = sorted((alias, image) for image in images for alias in matching(image, prefix))
    if not rows:
        return [f"No images found with prefix '{prefix}'"]
    lines = [f"Images with prefix '{prefix}':", f"{'ALIAS':<40} {'SIZE':<20} CREATED", "-" * 80]
    lines += [
        f"{alias:<40} {human_size(image.size):<20} {short_date(image.created_at)}" for alias, image in rows
    ]
    return lines


def _overview(images: list[Image], *, show_all: bool) -> list[str]:
    lines = ["Available Images:", "", "COI Images:"]
    main = next((i for i in images if DEFAULT_IMAGE in i.alias_names), None)
    if main is None:
        lines += [f"  ✗ {DEFAULT_IMAGE} (not built)", "    Build with: coi build"]
    else:
        description = main.properties.get("description", "")
        lines += [f"  ✓ {DEFAULT_IMAGE}" + (f" - {description}" if description else "")]
    lines.append("")
    if show_all:
        lines += ["All Local Images:", f"  {'ALIAS':<40} {'SIZE':<10} UPLOAD DATE"]
        for image in images:
            names = ", ".join(matching(image, "")) or f"({image.fingerprint[:12]})"
            lines.append(f"  {names:<40} {human_size(image.size):<10} {short_date(image.uploaded_at)}")
        if not images:
            lines.append("  (none)")
    else:
        lines.append("Tip: Use --all to see all local images")
    lines += [
        "",
        "Custom Images:",
        "  Build one on top of coi:  coi build custom NAME --script SCRIPT",
        "  Use it for a session:     coi shell --image NAME",
    ]
    return lines


@click.group()
async def image() -> None:
    """Manage the local images containers are made from."""


@image.command("list")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show every local image, not just coi's.")
@click.option("--prefix", default=None, help="Only images with an alias starting with this.")
@format_option("table", "json", description="table for people, json for scripts.")
@click.pass_obj
async def list_(app: App, *, show_all: bool, prefix: str | None, fmt: str) -> None:
    """List images."""
    await _list(app, show_all=show_all, prefix=prefix, fmt=fmt)


@click.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show every local image, not just coi's.")
@click.pass_obj
async def images(app: App, *, show_all: bool) -> None:
    """List images (older spelling of `coi image list`)."""
    await _list(app, show_all=show_all, prefix=None, fmt="table")


@image.command()
@click.argument("container")
@click.argument("alias")
@click.option("--description", default="", help="Description stored on the image.")
@click.pass_obj
async def publish(app: App, container: str, alias: str, *, description: str) -> None:
    """Publish CONTAINER as image ALIAS, then delete the container.

    A running container is stopped first. Prints {"alias", "fingerprint"} as JSON.
    """
    import msgspec

    from coi_async.orchestration.images import versions as image_versions

    async with connected(app, PUBLISH_S, f"publishing {container}") as incus:
        fingerprint = await image_versions.publish(incus, container, alias, description=description)
    click.echo(msgspec.json.encode({"alias": alias, "fingerprint": fingerprint}).decode())


@image.command()
@click.argument("alias")
@click.pass_obj
async def delete(app: App, alias: str) -> None:
    """Delete the image ALIAS names (with all its aliases)."""
    from coi_async.orchestration.images import versions as image_versions

    async with connected(app, QUICK_S * 2, f"deleting image {alias}") as incus:
        await image_versions.delete(incus, alias)
    say(f"Image {alias} deleted")


@image.command()
@click.argument("alias")
@click.pass_obj
async def exists(app: App, alias: str) -> None:
    """Exit 0 if image ALIAS exists, 1 if not."""
    async with connected(app, QUICK_S, f"looking up image {alias}") as incus:
        found = await incus.find_image(alias)
    sys.exit(0 if found is not None else 1)


@image.command()
@click.argument("prefix")
@click.option("--keep", type=int, required=True, help="How many of the newest versions to keep.")
@click.pass_obj
async def cleanup(app: App, prefix: str, *, keep: int) -> None:
    """Delete old versions PREFIX...-YYYYMMDD-HHMMSS, keeping the --keep newest.

    Only aliases ending in the version stamp count; an image another alias still names is kept.
    """
    from coi_async.orchestration.images import versions as image_versions

    if keep <= 0:
        raise UsageError("--keep must be > 0")
    async with connected(app, PUBLISH_S, f"cleaning up {prefix}") as incus:
        report = await image_versions.cleanup(incus, prefix, keep)
    say("Cleanup complete:")
    if report.deleted:
        say(f"\nDeleted {len(report.deleted)} old version(s):")
        for v in report.deleted:
            say(f"  - {v.alias} ({v.fingerprint[:12]})")
    if report.kept:
        say(f"\nKept {len(report.kept)} recent version(s):")
        for v in report.kept:
            say(f"  - {v.alias} ({v.fingerprint[:12]})")
    if not (report.deleted or report.kept or report.failed):
        say(f"\nNo versions found with prefix '{prefix}'")
    if report.failed:
        say(f"\nFailed to delete {len(report.failed)} version(s):")
        for v, reason in report.failed:
            say(f"  - {v.alias} ({v.fingerprint[:12]}): {reason}")
        total = len(report.failed) + len(report.deleted)
        raise CoiError(f"{len(report.failed)} of {total} old versions could not be deleted")
