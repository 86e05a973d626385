"""What `coi list`, `coi info` and `coi persist` need: session containers joined with saved metadata."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import msgspec

from coi_async.config import Config
from coi_async.errors import NotFoundError, SessionNotFoundError
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance, InstancePatch
from coi_async.naming import KEY_FORKED_FROM, KEY_PERSISTENT, KEY_TOOL, KEY_WORKSPACE, is_session_listed
from coi_async.orchestration.network.plan import KEY_NETWORK
from coi_async.orchestration.runner import ItemContext, run_bulk
from coi_async.orchestration.sessions.model import session_of
from coi_async.orchestration.sessions.store import SessionMetadata, SessionStore, saved_key
from coi_async.tools import DEFAULT_TOOL

_STATE_PARALLEL = 16
_STATE_S = 10.0


class ActiveContainer(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    status: str
    ipv4: str
    created_at: str
    image: str  # the image's description, as the instance config records it
    persistent: bool
    workspace: str  # "" when unknown
    network: str = ""  # the session's network mode; "" when the instance does not say
    forked_from: str = ""  # `coi fork`: the container this one is a copy of
    tool: str = DEFAULT_TOOL  # the AI tool the session runs
    location: str = ""  # the cluster member it is on ("" on a standalone server)


def _latest_metadata(stores: Sequence[SessionStore]) -> dict[str, SessionMetadata]:
    """Container name → metadata of its most recently saved session (of any of the stores)."""
    sessions = [s for store in stores for s in store.list_sessions(with_data_only=False)]
    latest: dict[str, SessionMetadata] = {}
    for session in sorted(sessions, key=saved_key):  # oldest first: later ones win
        if session.metadata and session.metadata.container_name:
            latest[session.metadata.container_name] = session.metadata
    return latest


def to_active(
    inst: Instance, meta: SessionMetadata | None, config: Config, *, ipv4: str = ""
) -> ActiveContainer:
    """One row: the session the instance is (`session_of`), the saved metadata winning where
    it says more. An instance under the prefix but not named like a session is listed as such."""
    session = session_of(inst, config)
    persistent = session.persistent if session else inst.config.get(KEY_PERSISTENT) == "true"
    if meta is not None:
        persistent = meta.persistent
    workspace = (meta.workspace if meta else "") or (
        session.workspace if session else inst.config.get(KEY_WORKSPACE, "")
    )
    return ActiveContainer(
        name=inst.name,
        status=inst.status,
        ipv4=ipv4,
        created_at=inst.created_at,
        image=inst.config.get("image.description", ""),
        persistent=persistent,
        workspace=workspace,
        network=inst.config.get(KEY_NETWORK, ""),
        forked_from=inst.config.get(KEY_FORKED_FROM, ""),
        tool=inst.config.get(KEY_TOOL, "") or (meta.tool if meta else DEFAULT_TOOL),
        # A standalone server says "none".
        location="" if inst.location in ("", "none") else inst.location,
    )


async def prefixed_instances(incus: IncusClient, prefix: str) -> list[Instance]:
    """Every instance whose name starts with the prefix (all states) but the warm pool's, sorted
    by name."""
    instances = await incus.list_instances()
    return sorted((i for i in instances if is_session_listed(i.name, prefix)), key=lambda i: i.name)


async def addresses(incus: IncusClient, instances: Sequence[Instance]) -> dict[str, str]:
    """The IPv4 address of every running instance that has a NIC, its state asked for at once.

    Only those: a state costs incusd tens of milliseconds (disk usage included), and a session
    without a NIC, which is every proxied one, has no address to show."""
    wanted = [
        i.name
        for i in instances
        if i.running and any(d.get("type") == "nic" for d in i.expanded_devices.values())
    ]
    found: dict[str, str] = {}

    async def ask(ctx: ItemContext) -> None:
        found[ctx.name] = (await incus.get_instance_state(ctx.name)).ipv4()

    await run_bulk(wanted, ask, limit=_STATE_PARALLEL, per_item_s=_STATE_S)
    return found


async def active_containers(
    incus: IncusClient, *, config: Config, stores: Sequence[SessionStore], tool: str = ""
) -> list[ActiveContainer]:
    """The session containers, joined with the metadata the stores hold; only `tool`'s if given."""
    instances = await prefixed_instances(incus, config.container_prefix)
    metadata = _latest_metadata(stores)
    ipv4 = await addresses(incus, instances)
    rows = [to_active(i, metadata.get(i.name), config, ipv4=ipv4.get(i.name, "")) for i in instances]
    return [row for row in rows if not tool or row.tool == tool]


async def persist_container(incus: IncusClient, store: SessionStore, name: str) -> bool:
    """Mark a container persistent: in its config, its Incus ephemerality and its session metadata.

    Returns whether session metadata was found (and rewritten). SessionNotFoundError if the
    container does not exist.
    """
    try:
        inst = await incus.get_instance(name)
    except NotFoundError:
        raise SessionNotFoundError(f"container {name} not found") from None
    patch = InstancePatch(config={KEY_PERSISTENT: "true"}, ephemeral=False if inst.ephemeral else None)
    with contextlib.suppress(NotFoundError):
        await incus.update_instance(name, patch)
    sessions = store.for_container(name)
    for session in sessions[:1]:
        meta = session.metadata
        if meta is not None:
            store.save_metadata(msgspec.structs.replace(meta, persistent=True))
    return bool(sessions)
