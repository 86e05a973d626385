"""Image versions (`<alias>-YYYYMMDD-HHMMSS`), publishing, and cleanup of old versions.

`plan_cleanup` is pure: it decides from an image list which versions go. Only aliases that end in
the version stamp count as versions, so `cleanup coi- --keep 3` can never take the main `coi`
alias or a hand-made `coi-latest` with it; and an image that some other alias still names is
kept, because deleting an image deletes every alias that points to it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from coi_async.errors import CoiError, ConflictError, NotFoundError, UsageError
from coi_async.incus import IncusClient
from coi_async.incus.models import Image, InstancePatch
from coi_async.orchestration.containers.commands import container_errors
from coi_async.orchestration.runner import BulkReport, ItemContext, run_bulk

VERSION_RE = re.compile(r"-(\d{8}-\d{6})$")


@dataclass(frozen=True, slots=True)
class Version:
    alias: str
    fingerprint: str
    stamp: str  # "YYYYMMDD-HHMMSS": sorts as time does


@dataclass(frozen=True, slots=True)
class CleanupPlan:
    delete: list[Version]  # oldest first
    keep: list[Version]  # newest first


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """The plan and how its deletes went: `run` has one result per version to delete, its item
    the image fingerprint."""

    plan: CleanupPlan
    run: BulkReport
    per_item_s: float

    @property
    def kept(self) -> list[Version]:
        return self.plan.keep

    @property
    def deleted(self) -> list[Version]:
        """The versions deleted (or gone already), oldest first."""
        ok = {r.item for r in self.run.succeeded}
        return [v for v in self.plan.delete if v.fingerprint in ok]

    @property
    def failed(self) -> list[tuple[Version, str]]:
        """The versions that could not be deleted, with the reason, oldest first."""
        reasons = {
            r.item: f"no answer after {self.per_item_s:g}s" if r.outcome == "timed-out" else r.error or ""
            for r in self.run.failed
        }
        return [(v, reasons[v.fingerprint]) for v in self.plan.delete if v.fingerprint in reasons]


def version_stamp(alias: str) -> str | None:
    match = VERSION_RE.search(alias)
    return match[1] if match else None


def plan_cleanup(images: Sequence[Image], prefix: str, keep: int) -> CleanupPlan:
    """Which versions under `prefix` to delete so that the `keep` newest remain."""
    if keep <= 0:
        raise UsageError("--keep must be > 0")
    versions: list[Version] = []
    pinned: set[str] = set()
    for image in images:
        mine = [a for a in image.alias_names if a.startswith(prefix) and version_stamp(a)]
        if not mine:
            continue
        newest = max(mine, key=lambda a: (version_stamp(a), a))
        versions.append(Version(newest, image.fingerprint, version_stamp(newest) or ""))
        if any(a not in mine for a in image.alias_names):
            pinned.add(image.fingerprint)
    versions.sort(key=lambda v: (v.stamp, v.alias), reverse=True)
    kept = versions[:keep] + [v for v in versions[keep:] if v.fingerprint in pinned]
    doomed = [v for v in versions[keep:] if v.fingerprint not in pinned]
    kept.sort(key=lambda v: (v.stamp, v.alias), reverse=True)
    return CleanupPlan(delete=doomed[::-1], keep=kept)


async def cleanup(
    incus: IncusClient, prefix: str, keep: int, *, parallel: int = 4, per_item_s: float = 120
) -> CleanupReport:
    """Delete the versions `plan_cleanup` picks, a few at once; a failed delete is reported."""
    plan = plan_cleanup(await incus.list_images(), prefix, keep)

    async def remove(ctx: ItemContext) -> None:
        try:
            await incus.delete_image(ctx.name)
        except NotFoundError:
            pass  # gone already: what we wanted

    run = await run_bulk([v.fingerprint for v in plan.delete], remove, limit=parallel, per_item_s=per_item_s)
    return CleanupReport(plan=plan, run=run, per_item_s=per_item_s)


async def alias_exists(incus: IncusClient, alias: str) -> bool:
    try:
        await incus.get_image_alias(alias)
    except NotFoundError:
        return False
    return True


async def publish(incus: IncusClient, container: str, alias: str, *, description: str = "") -> str:
    """Publish `container` as image `alias` and delete the container, as the reference does.

    The alias is checked first, because incusd makes the image before it finds the alias taken
    and would leave an unnamed image behind. A running container is stopped (an ephemeral one is
    made persistent first, or stopping it would delete it).
    """
    if await alias_exists(incus, alias):
        raise CoiError(f"image alias '{alias}' already exists")
    with container_errors(container):
        instance = await incus.get_instance(container)
        if instance.ephemeral:
            await incus.update_instance(container, InstancePatch(ephemeral=False))
        if instance.running:
            await incus.stop_instance(container, force=True)
        properties = {"description": description} if description else {}
        try:
            fingerprint = await incus.publish_image(container, aliases=[alias], properties=properties)
        except ConflictError as exc:
            raise CoiError(f"image alias '{alias}' already exists") from exc
        with contextlib.suppress(NotFoundError):
            await incus.delete_instance(container)
    return fingerprint


async def delete(incus: IncusClient, alias: str) -> str:
    """Delete the image `alias` (or a fingerprint) names; return its fingerprint."""
    image = await incus.find_image(alias)
    if image is None:
        raise CoiError(f"image '{alias}' not found")
    await incus.delete_image(image.fingerprint)
    return image.fingerprint
