"""What `coi list`, `coi info` and `coi persist` need: session containers joined with saved metadata."""

from __future__ import annotations

import contextlib

import msgspec

from coi_async.config import Config
from coi_async.errors import NotFoundError, SessionNotFoundError
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance, InstancePatch
from coi_async.naming import KEY_PERSISTENT, KEY_WORKSPACE
from coi_async.orchestration.network.plan import KEY_NETWORK
from coi_async.orchestration.sessions.model import session_of
from coi_async.orchestration.sessions.store import SessionMetadata, SessionStore


class ActiveContainer(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    status: str
    ipv4: str
    created_at: str
    image: str  # the image's description, as the instance config records it
    persistent: bool
    workspace: str  # "" when unknown
    network: str = ""  # the session's network mode; "" when the instance does not say


def _latest_metadata(store: SessionStore) -> dict[str, SessionMetadata]:
    """Container name → metadata of its most recently saved session."""
    latest: dict[str, SessionMetadata] = {}
    for session in store.list_sessions(with_data_only=False):  # oldest first: later ones win
        if session.metadata and session.metadata.container_name:
            latest[session.metadata.container_name] = session.metadata
    return latest


def to_active(inst: Instance, meta: SessionMetadata | None, config: Config) -> ActiveContainer:
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
        ipv4=inst.state.ipv4() if inst.state else "",
        created_at=inst.created_at,
        image=inst.config.get("image.description", ""),
        persistent=persistent,
        workspace=workspace,
        network=inst.config.get(KEY_NETWORK, ""),
    )


async def prefixed_instances(incus: IncusClient, prefix: str, *, with_state: bool = False) -> list[Instance]:
    """Every instance whose name starts with the prefix (all states), sorted by name."""
    instances = await incus.list_instances(recursion=2 if with_state else 1)
    return sorted((i for i in instances if i.name.startswith(prefix)), key=lambda i: i.name)


async def active_containers(
    incus: IncusClient, *, config: Config, store: SessionStore
) -> list[ActiveContainer]:
    instances = await prefixed_instances(incus, config.container_prefix, with_state=True)
    metadata = _latest_metadata(store)
    return [to_active(inst, metadata.get(inst.name), config) for inst in instances]


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
