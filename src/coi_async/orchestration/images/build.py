"""Image builds: steps run as root in throwaway containers, published as a versioned image.

Phases: base (make sure the base image exists), then for each step to run launch (a uniquely
named build container, from the base or the layer under the step) and recipe (the step's script,
its output streamed), then publish (publish uncompressed as `<alias>-YYYYMMDD-HHMMSS`, move
`<alias>` to it). A build of several steps keeps each step's result as a layer and starts from
the last one still valid (orchestration/images/layers.py); a failed step leaves the layers
before it, so the next build resumes there. The build container is deleted on every other exit
path, Ctrl-C included, and the alias moves only after a successful publish, so a failed build
leaves the previous image as it was.

Progress goes out as events (the item is the alias being built): each phase is a `StepStarted`
(step = the phase, detail = what it works on) and a `StepFinished`; the recipe's output is
`Output`; everything else is a `Note` whose kind is one of the `NOTE_*` ids (here and in
images/container.py). The CLI words them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime

import anyio
import anyio.to_thread

from coi_async.errors import BuildError, CoiError
from coi_async.incus.client import IncusClient
from coi_async.incus.models import InstanceSource
from coi_async.naming import KEY_TOOLS
from coi_async.orchestration import events
from coi_async.orchestration.events import Emit, StepFinished, StepStarted, note
from coi_async.orchestration.images import layers
from coi_async.orchestration.images.base import ensure_debian_base, load_base_recipe
from coi_async.orchestration.images.container import BuildContainer
from coi_async.orchestration.images.request import (
    DEBIAN_BASE,
    REMOTES,
    BuildRequest,
    BuildResult,
    BuildStep,
)

_CLEANUP_S = 60

# The phases, in order (`StepStarted.step`); the detail of each: the base named, the build
# container, the step (its script's file name), nothing.
PHASES = ("base", "launch", "recipe", "publish")

# `Note.kind`s of a build, with their values.
NOTE_RECIPE_CHANGED = "build-recipe-changed"  # alias
NOTE_LAYERS_REUSED = "build-layers-reused"  # steps (comma-separated): kept layers used as they are


async def recipe_keys(incus: IncusClient, request: BuildRequest) -> list[str]:
    """Each step's layer key; the last is what the image depends on (its `user.coi.recipe`):
    every step's script, pushed files and environment, and the base (its recipe or fingerprint)."""
    if request.base == DEBIAN_BASE:
        base_id = f"debian:{load_base_recipe().hash}"
    elif ":" in request.base:
        base_id = request.base
    else:
        image = await incus.find_image(request.base)
        base_id = image.fingerprint if image is not None else request.base
    return await anyio.to_thread.run_sync(layers.step_keys, request, base_id)


async def build_image(incus: IncusClient, request: BuildRequest, emit: Emit = events.ignore) -> BuildResult:
    """Build `request.alias`, or reuse it when it exists and its recipe is unchanged (unless forced)."""
    for step in request.steps:
        if not step.script.is_file():
            raise BuildError(f"build script not found: {step.script}")
    keys = await recipe_keys(incus, request)
    existing = await incus.find_image(request.alias)
    if existing is not None and not request.force:
        recorded = existing.properties.get("user.coi.recipe", "")
        if recorded in ("", keys[-1]):
            return BuildResult(
                alias=request.alias, fingerprint=existing.fingerprint, skipped=True, recipe=keys[-1]
            )
        note(emit, NOTE_RECIPE_CHANGED, request.alias, alias=request.alias)
    return await _Build(incus, request, emit, keys).run()


class _Build:
    def __init__(self, incus: IncusClient, request: BuildRequest, emit: Emit, keys: list[str]) -> None:
        self.incus = incus
        self.request = request
        self.emit = emit
        self.item = request.alias
        self.keys = keys
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def _phase(self, phase: str, detail: str) -> Iterator[None]:
        self.emit(StepStarted(item=self.item, step=phase, detail=detail))
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.timings[phase] = round(self.timings.get(phase, 0.0) + took, 2)
        self.emit(StepFinished(item=self.item, step=phase, seconds=round(took, 2)))

    async def run(self) -> BuildResult:
        request, prefix = self.request, self.request.container_prefix
        with self._phase("base", request.base):
            source = await self._resolve_base()
        first = 0
        if request.layered and not request.force:
            first = await layers.last_kept(self.incus, prefix, self.keys)
        if first:
            reused = [step.name for step in request.steps[:first]]
            note(self.emit, NOTE_LAYERS_REUSED, self.item, steps=", ".join(reused))
            source = _copy_of(layers.layer_name(prefix, self.keys[first - 1]))
        publish_from = layers.layer_name(prefix, self.keys[-1])
        box: BuildContainer | None = None
        try:
            for index in range(first, len(request.steps)):
                box = BuildContainer(self.incus, request, self.emit)
                await self._run_step(box, request.steps[index], source)
                publish_from = box.name
                if request.layered:
                    replace = request.force
                    publish_from = await layers.keep(
                        self.incus, box.name, prefix, self.keys[index], replace=replace
                    )
                    box = None
                    source = _copy_of(publish_from)
            with self._phase("publish", ""):
                fingerprint, version = await self._publish(publish_from)
        finally:
            if box is not None:
                self.timings["cleanup"] = round(await box.remove(), 2)
        if request.layered:
            await layers.prune(self.incus, prefix, self.keys)
        image = await self.incus.get_image(fingerprint)
        return BuildResult(
            alias=request.alias,
            fingerprint=fingerprint,
            version=version,
            recipe=self.keys[-1],
            size=image.size,
            timings=self.timings,
            reused=tuple(step.name for step in request.steps[:first]),
        )

    async def _run_step(self, box: BuildContainer, step: BuildStep, source: InstanceSource) -> None:
        with self._phase("launch", box.name):
            await box.create(source)
        async with box.egress() as env:
            detail = f"{step.name} step ({step.script.name})" if self.request.layered else step.script.name
            with self._phase("recipe", detail):
                await box.run(step, env)
        await box.stop()

    async def _resolve_base(self) -> InstanceSource:
        base = self.request.base
        if base == DEBIAN_BASE:
            fingerprint = await ensure_debian_base(self.incus, emit=self.emit)
            return InstanceSource(type="image", fingerprint=fingerprint)
        if ":" in base:
            remote, _, alias = base.partition(":")
            server = REMOTES.get(remote)
            if server is None or not alias:
                raise BuildError(
                    f"unknown base image '{base}': no remote image server called '{remote}'",
                    hint=f"known remotes: {', '.join(REMOTES)}; or use a local image alias",
                )
            return InstanceSource(type="image", alias=alias, server=server, protocol="simplestreams")
        image = await self.incus.find_image(base)
        if image is None:
            hint = "build it with `coi build`" if base == "coi" else "see `incus image list` for local images"
            raise BuildError(
                f"unknown base image '{base}': no local image has that alias or fingerprint", hint=hint
            )
        return InstanceSource(type="image", fingerprint=image.fingerprint)

    async def _publish(self, container: str) -> tuple[str, str]:
        """Publish the stopped `container` as the next version and move the alias to it."""
        version = f"{self.request.alias}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        properties = {
            "description": f"{self.request.description or self.request.alias} ({version})",
            "user.coi.image": self.request.alias,
            "user.coi.recipe": self.keys[-1],
            "user.coi.base": self.request.base,
        }
        if self.request.tools:
            properties[KEY_TOOLS] = ",".join(self.request.tools)
        fingerprint = await self.incus.publish_image(
            container, aliases=[version], properties=properties, compression="none"
        )
        try:
            await self.incus.point_image_alias(
                self.request.alias, fingerprint, description=properties["description"]
            )
        except BaseException:
            with anyio.move_on_after(_CLEANUP_S, shield=True), contextlib.suppress(CoiError):
                await self.incus.delete_image(fingerprint)
            raise
        return fingerprint, version


def _copy_of(layer: str) -> InstanceSource:
    return InstanceSource(type="copy", source=layer, instance_only=True)
