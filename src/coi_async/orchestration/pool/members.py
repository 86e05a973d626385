"""What a pool member is, and which storage makes a pool worth having.

A member is a stopped container `<prefix>pool-<fingerprint12>-<random>` made from the image with
no workspace, no session keys and every NIC of the default profile masked, so that nothing of it
ever reaches a network even if someone starts it. Its `user.coi.pool*` keys say it is a member,
of which image (by fingerprint: an alias moves when the image is rebuilt, and a member of the
old image must not be taken for the new one), and whether it is complete: a member being made is
never taken. Its name is no session name (`naming.SessionName.parse` refuses it), so `coi list`,
`shutdown --all` and `clean` never treat it as a session.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import msgspec

from coi_async.errors import IncusApiError
from coi_async.incus import IncusClient
from coi_async.incus.instances import config_filter
from coi_async.incus.models import Instance
from coi_async.naming import pool_member_prefix

KEY_POOL = "user.coi.pool"  # "true" on a member
KEY_POOL_IMAGE = "user.coi.pool.image"  # the image fingerprint it was made from
KEY_POOL_ALIAS = "user.coi.pool.alias"  # the image name it was made for (for status, staleness)
KEY_POOL_READY = "user.coi.pool.ready"  # "true" once complete: only then may it be taken
POOL_KEYS = (KEY_POOL, KEY_POOL_IMAGE, KEY_POOL_ALIAS, KEY_POOL_READY)

# Where creating a container copies the whole image (measured: benchmarks/pool.py); on the
# copy-on-write drivers (btrfs, zfs, lvm thin, ceph) it costs well under the pool's saving.
SLOW_DRIVERS = frozenset({"dir"})
# `[pool] size = "auto"` on slow storage.
AUTO_SIZE = 2

_MAX_NAME = 63
_DEFAULT_PROFILE = "default"


def member_name(prefix: str, fingerprint: str) -> str:
    """A fresh member name: never a session name, unique by its random part."""
    stem = pool_member_prefix(prefix)
    tail = f"-{secrets.token_hex(3)}"
    # The fingerprint in the name is for people; the key is what counts, so a long prefix cuts it.
    return f"{stem}{fingerprint[: max(0, min(12, _MAX_NAME - len(stem) - len(tail)))]}{tail}"


def is_member(instance: Instance, prefix: str) -> bool:
    return instance.config.get(KEY_POOL) == "true" and instance.name.startswith(pool_member_prefix(prefix))


class Member(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    fingerprint: str
    image: str
    ready: bool
    created_at: str = ""


def as_member(instance: Instance) -> Member:
    return Member(
        name=instance.name,
        fingerprint=instance.config.get(KEY_POOL_IMAGE, ""),
        image=instance.config.get(KEY_POOL_ALIAS, ""),
        ready=instance.config.get(KEY_POOL_READY) == "true" and not instance.running,
        created_at=instance.created_at,
    )


async def list_members(incus: IncusClient, prefix: str) -> list[Instance]:
    """Every member of this prefix's pool in the project (complete or not), from one listing."""
    found = await incus.list_instances(filter_expr=config_filter({KEY_POOL: "true"}))
    return sorted((i for i in found if is_member(i, prefix)), key=lambda i: i.name)


def ready_of(members: Sequence[Instance], fingerprint: str) -> list[Instance]:
    """The members that may be taken for the image `fingerprint`."""
    return [m for m in members if as_member(m).ready and as_member(m).fingerprint == fingerprint]


async def storage_driver(incus: IncusClient) -> str:
    """The driver of the storage pool a new container goes to (the default profile's root disk);
    "" when that is not known (also where this user may not read it: a restricted project)."""
    try:
        profile = await incus.get_profile(_DEFAULT_PROFILE)
    except IncusApiError:
        return ""
    roots = [d for d in profile.devices.values() if d.get("type") == "disk" and d.get("path") == "/"]
    if not roots or not roots[0].get("pool"):
        return ""
    try:
        return (await incus.get_storage_pool(roots[0]["pool"])).driver
    except IncusApiError:
        return ""


def size_for(configured: int | None, driver: str) -> int:
    """How many members to keep: the configured number, or for "auto" (None) AUTO_SIZE on slow
    storage and none elsewhere."""
    if configured is not None:
        return configured
    return AUTO_SIZE if driver in SLOW_DRIVERS else 0
