"""Kept layers of a build of several steps: each step's result is a stopped container that later
builds copy instead of running the step again.

A layer is keyed by a hash of its step (script, pushed files, environment) and of the layer under
it, down to the base, so a layer is reused only while it and everything before it are unchanged:
`coi build --tools claude,codex` after `coi build` runs codex's step alone, on a copy of the kept
claude layer. Copies are snapshots on copy-on-write pools, so layers cost little room there. A
layer is `<prefix>layer-<key>` with `user.coi.layer=<full key>`; one whose key does not match
its name's is not a layer. The layers of the build just made are kept, and of the others the
LAYERS_KEPT most recent; older ones are removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import anyio

from coi_async.errors import CoiError, ConflictError, NotFoundError
from coi_async.incus.client import IncusClient
from coi_async.incus.models import InstancePatch
from coi_async.orchestration.containers import ops
from coi_async.orchestration.images.request import BuildRequest, BuildStep
from coi_async.orchestration.runner import ItemContext, run_bulk
from coi_async.recipes import files_hash

KEY_LAYER = "user.coi.layer"
LAYERS_KEPT = 8
_KEY_CHARS = 16
_PRUNE_PARALLEL = 4
_PRUNE_ITEM_S = 60.0


def step_keys(request: BuildRequest, base_id: str) -> list[str]:
    """Each step's layer key, in order; the last one is the image's recipe hash."""
    keys: list[str] = []
    parent = f"base:{base_id}"
    for step in request.steps:
        parent = _key(step, parent)
        keys.append(parent)
    return keys


def _key(step: BuildStep, parent: str) -> str:
    paths = [step.script, *(step.files[k] for k in sorted(step.files))]
    env = tuple(f"{k}={v}" for k, v in sorted(step.env.items()))
    return files_hash(*paths, extra=(parent, step.name, *env))


def layer_name(prefix: str, key: str) -> str:
    return f"{prefix}layer-{key[:_KEY_CHARS]}"


async def is_layer(incus: IncusClient, prefix: str, key: str) -> bool:
    """Whether the layer of `key` is there, complete and stopped."""
    instance = await ops.state(incus, layer_name(prefix, key))
    return instance is not None and instance.config.get(KEY_LAYER) == key and instance.status == "Stopped"


async def last_kept(incus: IncusClient, prefix: str, keys: Sequence[str]) -> int:
    """How many of the steps have their layer kept: the index of the first step to run."""
    for index in range(len(keys), 0, -1):
        if await is_layer(incus, prefix, keys[index - 1]):
            return index
    return 0


async def keep(incus: IncusClient, container: str, prefix: str, key: str, *, replace: bool) -> str:
    """Make the stopped `container` the layer of `key`; its name then.

    The rename is the commit: a concurrent build that kept the same layer first wins, and this
    container is removed (the two are the same step on the same layer). With `replace` (a forced
    build) an existing layer of that name is removed first.
    """
    name = layer_name(prefix, key)
    with anyio.CancelScope(shield=True):
        await incus.update_instance(container, InstancePatch(config={KEY_LAYER: key}))
        if replace:
            await ops.remove(incus, name)
        try:
            await incus.rename_instance(container, name)
        except ConflictError:
            if not await is_layer(incus, prefix, key):
                raise
            await ops.remove(incus, container)
    return name


async def prune(incus: IncusClient, prefix: str, used: Sequence[str]) -> None:
    """Remove the layers neither in `used` (layer keys) nor among the LAYERS_KEPT most recent."""
    try:
        instances = await incus.list_instances()
    except CoiError:
        return  # pruning is tidying: the build is done either way
    others = [
        i
        for i in instances
        if i.name.startswith(f"{prefix}layer-")
        and i.config.get(KEY_LAYER, "") not in used
        and i.status == "Stopped"
    ]
    others.sort(key=lambda i: i.created_at, reverse=True)
    stale = [i.name for i in others[LAYERS_KEPT:]]
    if stale:

        async def remove(item: ItemContext) -> None:
            with contextlib.suppress(NotFoundError):  # another build pruned it
                await ops.remove(incus, item.name)

        await run_bulk(stale, remove, limit=_PRUNE_PARALLEL, per_item_s=_PRUNE_ITEM_S)
