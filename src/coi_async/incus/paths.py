"""URL paths of API objects, with names quoted so that no name can reach another endpoint.

Quoting leaves `.` alone (it is unreserved), and a path segment `.` or `..` is resolved by the
URL layer before the request is sent (`/1.0/instances/..` is `/1.0`), so those, and the empty
name, are refused here: before any request reaches the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from coi_async.errors import UsageError

_NOT_NAMES = ("", ".", "..")


def _object_path(collection: str, what: str) -> Callable[[str], str]:
    """The path of one object of `collection` (a `what`) by its name."""

    def path(name: str) -> str:
        if name in _NOT_NAMES:
            raise UsageError(f"invalid {what} name {name!r}")
        return f"{collection}/{quote(name, safe='')}"

    return path


instance_path = _object_path("/1.0/instances", "instance")
image_path = _object_path("/1.0/images", "image")
image_alias_path = _object_path("/1.0/images/aliases", "image alias")
profile_path = _object_path("/1.0/profiles", "profile")
project_path = _object_path("/1.0/projects", "project")
certificate_path = _object_path("/1.0/certificates", "certificate")
cluster_member_path = _object_path("/1.0/cluster/members", "cluster member")
storage_pool_path = _object_path("/1.0/storage-pools", "storage pool")
