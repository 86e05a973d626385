"""Create (or reuse) a session container in a free slot, race-free.

incusd is the lock: a slot is taken by creating the instance under the slot's name, in one
create-and-start operation. A name conflict means another coi got there first, and we move on to
the next slot; nothing is ever decided from a listing alone. What the instance is made of is
instance_spec.py's.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence

import anyio
import msgspec

from coi_async.errors import (
    CoiError,
    ConflictError,
    IncusApiError,
    InstanceBusyError,
    NoFreeSlotError,
    SessionError,
)
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance, InstanceSource, InstancesPost
from coi_async.naming import KEY_LAUNCH, KEY_PERSISTENT, KEY_TOOLS, SessionName, workspace_hash
from coi_async.orchestration.containers import ops
from coi_async.orchestration.events import Emit, ignore, note
from coi_async.orchestration.network.session import prepare_reused
from coi_async.orchestration.pool.take import open_pool
from coi_async.orchestration.sessions.instance_spec import (
    LaunchSpec,
    idmap_plans,
    instance_config,
    instance_devices,
    refused_plan,
    remember_plan,
)
from coi_async.orchestration.sessions.model import home_of, user_of_uid
from coi_async.orchestration.sessions.placement import Placement, survey_cluster
from coi_async.placement import choose, with_placed
from coi_async.slots import Candidate, Occupant, candidates, validate_slot

# How often a launch re-lists and tries again when every candidate slot was taken under it.
_ROUNDS = 3

# Another way to create and start the instance `name` for `slot` (e.g. a copy of another
# instance): the idmap plan it used; ConflictError when the name is taken, and nothing of its
# own left behind when it fails.
SlotCreator = Callable[[str, int], Awaitable[str]]


class Launched(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    slot: int
    reused: bool  # an existing persistent container was started (or found running)
    idmap: str  # "shift", "raw.idmap", or "" when reused
    uid: int  # the code user's uid (and gid) inside
    user: str
    home: str
    location: str = ""  # the cluster member it was placed on ("": standalone, or reused)

    @property
    def created(self) -> bool:
        return not self.reused


def occupants(instances: Sequence[Instance], *, prefix: str, workspace: str) -> dict[int, Occupant]:
    """The workspace's slots that hold a container, from one instance listing."""
    wanted = workspace_hash(workspace)
    found: dict[int, Occupant] = {}
    for inst in instances:
        name = SessionName.parse(inst.name, prefix)
        if name is None or name.workspace_hash != wanted:
            continue
        persistent = inst.config.get(KEY_PERSISTENT) == "true"
        found[name.slot] = Occupant(slot=name.slot, running=inst.running, persistent=persistent)
    return found


async def _start_again(incus: IncusClient, name: str) -> None:
    """Start our freshly made instance after a rival's create of the same name blocked it."""
    for attempt in range(20):
        try:
            await incus.start_instance(name)
            return
        except InstanceBusyError:
            if attempt == 19:
                raise
        await anyio.sleep(0.1)


async def _create(
    incus: IncusClient, spec: LaunchSpec, name: str, slot: int, emit: Emit, *, target: str = ""
) -> str:
    """Create and start `name`; the idmap plan used. ConflictError when the name is taken.

    The instance carries a random launch token, so after a failure we know whether the
    instance under that name is ours (created, but the start failed) or a rival's.
    """
    last: IncusApiError | None = None
    for plan in idmap_plans(spec):
        token = secrets.token_hex(8)
        request = InstancesPost(
            name=name,
            source=InstanceSource(type="image", alias=spec.image),
            start=True,
            ephemeral=spec.ephemeral,
            config={**instance_config(spec, slot), **plan.config, KEY_LAUNCH: token},
            devices=instance_devices(spec, shift=plan.shift, name=name),
        )
        try:
            await incus.create_instance(request, target=target or None)
        except ConflictError:
            raise
        except IncusApiError as exc:
            owner = await owner_after_failure(incus, name, token, exc)
            if owner == token and isinstance(exc, InstanceBusyError):
                # Ours, but a rival's concurrent create of this name held its lock as we started.
                try:
                    await _start_again(incus, name)
                except BaseException:
                    await ops.remove_if_ours(incus, name, token)
                    raise
            else:
                # Created but not started, or refused: never leave ours behind.
                await ops.remove_if_ours(incus, name, token)
                if owner is None and isinstance(exc, InstanceBusyError):
                    # A rival's create was in flight (and may yet fail): treat the name as taken.
                    raise ConflictError(409, exc.message) from exc
                if not refused_plan(plan, exc, created=owner == token):
                    raise
                note(emit, "launch.idmap-fallback", name, plan=plan.kind, error=exc.message)
                last = exc
                continue
        except BaseException:
            await ops.remove_if_ours(incus, name, token)
            raise
        remember_plan(spec, plan.kind)
        return plan.kind
    assert last is not None
    raise last


async def owner_after_failure(incus: IncusClient, name: str, token: str, exc: IncusApiError) -> str | None:
    """The launch token on `name` after our create with `token` failed with `exc` (None: no
    instance, or one without a token); ConflictError when a rival's instance holds the name."""
    owner = await ops.launch_token(incus, name)
    if owner is not None and owner != token:
        raise ConflictError(409, exc.message) from exc
    return owner


async def _check_image(incus: IncusClient, image: str, tool: str) -> None:
    """The image exists and, where it records its AI tools (`coi build`), has the session's."""
    found = await incus.find_image(image)
    if found is None:
        raise CoiError(f"image '{image}' not found - run 'coi build' first")
    tools = [t for t in found.properties.get(KEY_TOOLS, "").split(",") if t]
    if tools and tool not in tools:
        wanted = ",".join([*tools, tool])
        raise CoiError(
            f"image '{image}' has no {tool} (it has {', '.join(tools)}) - add it with: coi build --tools {wanted}"
        )


async def _survey(
    incus: IncusClient, spec: LaunchSpec, *, check_image: bool = True
) -> tuple[dict[int, Occupant], Placement]:
    """The workspace's slots and, on a cluster, where a new container may go (one listing)."""
    found: list[Instance] = []
    clustered: list[bool] = []

    async def listing() -> None:
        found.extend(await incus.list_instances())

    async def server() -> None:
        clustered.append((await incus.server_info(cached=True)).environment.server_clustered)

    async with anyio.create_task_group() as tg:
        if check_image:
            tg.start_soon(_check_image, incus, spec.image, spec.tool)
        tg.start_soon(listing)
        # Placed only when made from the image: another way to make it (a fork's copy) goes
        # where incusd puts it.
        if check_image:
            tg.start_soon(server)
    placement = await survey_cluster(
        incus,
        found,
        clustered=bool(clustered and clustered[0]),
        policy=spec.placement,
        target=spec.target,
        prefix=spec.prefix,
    )
    return occupants(found, prefix=spec.prefix, workspace=spec.workspace), placement


async def launch(
    incus: IncusClient, spec: LaunchSpec, *, emit: Emit = ignore, create: SlotCreator | None = None
) -> Launched:
    """Take a slot for the workspace and have its container running; see the module docstring.

    An explicit `spec.slot` must be free, or hold a stopped persistent container that a
    persistent launch reuses; otherwise the lowest free slot is taken (a stopped persistent
    container of this workspace first, when persistent). Raises UsageError for a bad slot,
    SessionError when the slot is busy, NoFreeSlotError when all are taken, CoiError for a
    missing image. Nothing is left behind on failure or cancellation. `create` replaces the
    create from `spec.image` (whose existence is then not checked).
    """
    if spec.slot:
        validate_slot(spec.slot, max_slots=spec.max_slots)
    prefix_name = SessionName.for_workspace(spec.workspace, 1, prefix=spec.prefix)
    user = user_of_uid(spec.code_user, spec.code_uid)
    home = home_of(user, spec.code_uid)

    def done(slot: int, *, reused: bool, idmap: str = "", location: str = "") -> Launched:
        name = str(prefix_name.with_slot(slot))
        return Launched(
            name=name,
            slot=slot,
            reused=reused,
            idmap=idmap,
            uid=spec.code_uid,
            user=user,
            home=home,
            location=location,
        )

    # Made-ahead containers of the image, when its storage makes creating one slow.
    warm = await open_pool(incus, spec, emit) if create is None else None
    for _ in range(_ROUNDS):
        taken, placement = await _survey(incus, spec, check_image=create is None)
        order: list[Candidate]
        preferred = taken.get(spec.prefer_slot) if spec.prefer_slot and not spec.slot else None
        if spec.slot:
            current = taken.get(spec.slot)
            if current is None:
                order = [Candidate(slot=spec.slot)]
            elif spec.persistent and current.persistent and not current.running:
                order = [Candidate(slot=spec.slot, reuse=True)]
            elif spec.next_if_busy:
                order = [
                    c
                    for c in candidates(
                        taken.values(), max_slots=spec.max_slots, persistent=False, start=spec.slot + 1
                    )
                    if c.slot != spec.slot
                ]
                if not order:
                    raise NoFreeSlotError(spec.max_slots)
                note(emit, "launch.slot-occupied", slot=str(spec.slot), instead=str(order[0].slot))
            else:
                state = "running" if current.running else "stopped"
                raise SessionError(
                    f"slot {spec.slot} is in use by {state} container {prefix_name.with_slot(spec.slot)}",
                    hint="pick another --slot, or leave it out to take a free one",
                )
        elif preferred is not None and preferred.persistent and spec.persistent and preferred.running:
            note(emit, "launch.reusing-running", str(prefix_name.with_slot(preferred.slot)))
            return done(preferred.slot, reused=True)
        else:
            order = candidates(taken.values(), max_slots=spec.max_slots, persistent=spec.persistent)
            if preferred is not None and spec.persistent and preferred.persistent:
                order.sort(key=lambda c: c.slot != preferred.slot)
        for choice in order:
            name = str(prefix_name.with_slot(choice.slot))
            if choice.reuse:
                try:
                    # Its network as this session's: no NIC may come up with it.
                    await prepare_reused(incus, spec.egress, name)
                    await incus.start_instance(name)
                except IncusApiError:
                    # Started (or removed) by someone else since the listing: not ours to take.
                    continue
                note(emit, "launch.restarting", name)
                return done(choice.slot, reused=True)
            target = ""
            made = spec
            if placement.clustered:
                target = choose(
                    placement.policy,
                    placement.members,
                    slot=choice.slot,
                    target=placement.target,
                    only=spec.egress.served_members() if spec.egress else None,
                )
                if spec.egress is not None and spec.egress.needs_member:
                    made = msgspec.structs.replace(spec, egress=spec.egress.on_member(target))
            try:
                if create is not None:
                    kind = await create(name, choice.slot)
                elif warm is None or not (kind := await warm.take(name, choice.slot)):
                    kind = await _create(incus, made, name, choice.slot, emit, target=target)
            except ConflictError:
                if target:
                    placement = msgspec.structs.replace(
                        placement, members=with_placed(placement.members, target)
                    )
                continue
            if target:
                note(emit, "launch.placed", name, member=target)
            if warm is not None:
                warm.refill()  # after the take: the making competes with no session's create
            return done(choice.slot, reused=False, idmap=kind, location=target)
        if spec.slot and not spec.next_if_busy:
            raise SessionError(f"slot {spec.slot} was taken by another session just now")
    raise NoFreeSlotError(spec.max_slots)
