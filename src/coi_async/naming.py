"""Names coi gives things: session containers, tmux sessions, and the config keys it stamps.

A session container is called `<prefix><hash8>-<slot>`, where `hash8` is the first 8 hex digits of
the sha256 of the workspace's absolute path (not resolved through symlinks, like Go's
`filepath.Abs`), so every workspace owns its own range of slots. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import os.path
import re
from collections.abc import Mapping

import msgspec

from coi_async.errors import ConfigError

HASH_LEN = 8
DEFAULT_PREFIX = "coi-"
PREFIX_ENV = "COI_CONTAINER_PREFIX"
# tmux sessions keep the reference's hardcoded prefix whatever the container prefix is.
TMUX_PREFIX = "coi-"

# Config keys coi stamps on every instance it creates, so ownership never rests on names alone.
KEY_MANAGED = "user.coi.managed"  # "true"
KEY_WORKSPACE = "user.coi.workspace"  # absolute workspace path on the host
KEY_WORKSPACE_HASH = "user.coi.workspace_hash"  # its 8-hex hash
KEY_SLOT = "user.coi.slot"  # "1".."max"
KEY_SESSION = "user.coi.session"  # the coi session id (uuid)
KEY_PERSISTENT = "user.coi.persistent"  # "true" / "false"
KEY_TOOL = "user.coi.tool"  # e.g. "claude"
KEY_TOOLS = "user.coi.tools"  # an image's property: the AI tools `coi build` installed, "claude,codex"
KEY_UID = "user.coi.uid"  # uid the session's processes run as inside
KEY_USER = "user.coi.user"  # the user name those processes run as (home: /home/<user>, /root for 0)
KEY_IMAGE = "user.coi.image"  # the image (alias) the instance was made from
KEY_LAUNCH = "user.coi.launch"  # random per create: tells a launch its own instance from a rival's
KEY_RESTORING = "user.coi.restoring"  # "true" while `coi snapshot restore` has it stopped
KEY_FORKED_FROM = "user.coi.forked_from"  # `coi fork`: the container this one is a copy of

# Incus instance names: letters, digits and dashes, starting with a letter, at most 63 long.
_MAX_NAME = 63
_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def absolute_workspace(path: str, cwd: str) -> str:
    """`path` made absolute against `cwd` and normalised, without resolving symlinks."""
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))


def workspace_hash(abs_path: str) -> str:
    """First 8 hex digits of sha256 of the absolute workspace path, exactly as the reference."""
    return hashlib.sha256(abs_path.encode()).hexdigest()[:HASH_LEN]


def container_prefix(env: Mapping[str, str]) -> str:
    """The container-name prefix: `$COI_CONTAINER_PREFIX`, or `coi-` when unset or empty."""
    prefix = env.get(PREFIX_ENV, "") or DEFAULT_PREFIX
    check_prefix(prefix, source=PREFIX_ENV)
    return prefix


def check_prefix(prefix: str, *, source: str) -> None:
    longest_suffix = HASH_LEN + 4  # "-" plus up to three slot digits
    if not _PREFIX_RE.fullmatch(prefix) or len(prefix) + longest_suffix > _MAX_NAME:
        raise ConfigError(
            f"{source}: invalid container prefix {prefix!r}",
            hint="use letters, digits and dashes, starting with a letter",
        )


def pool_member_prefix(prefix: str) -> str:
    """Where the names of warm-pool members start (`<prefix>pool-<fingerprint>-<random>`): no
    session name, and no session either (orchestration/pool)."""
    return f"{prefix}pool-"


def is_session_listed(name: str, prefix: str) -> bool:
    """Whether `coi list`, `top` and the `--all` of `persist` and `limit` show the instance: under
    the prefix, and not a warm-pool member."""
    return name.startswith(prefix) and not name.startswith(pool_member_prefix(prefix))


def tmux_session(container: str) -> str:
    """The tmux session coi runs the tool in inside `container`: `coi-<container>`."""
    return f"{TMUX_PREFIX}{container}"


def name_pattern(prefix: str) -> re.Pattern[str]:
    """Matches `<prefix><hash8>-<slot>`: group 1 is the hash, group 2 the slot."""
    return re.compile(rf"{re.escape(prefix)}([0-9a-f]{{{HASH_LEN}}})-([1-9][0-9]*)")


class SessionName(msgspec.Struct, frozen=True, order=True):
    """`<prefix><workspace-hash>-<slot>`, e.g. coi-4bd27bda-2."""

    prefix: str
    workspace_hash: str
    slot: int

    def __str__(self) -> str:
        return f"{self.prefix}{self.workspace_hash}-{self.slot}"

    @classmethod
    def for_workspace(cls, abs_workspace: str, slot: int, *, prefix: str) -> SessionName:
        return cls(prefix, workspace_hash(abs_workspace), slot)

    @classmethod
    def parse(cls, name: str, prefix: str) -> SessionName | None:
        """The parts of a coi container name; None for names coi did not make (never raises)."""
        match = name_pattern(prefix).fullmatch(name)
        if match is None:
            return None
        return cls(prefix, match[1], int(match[2]))

    def with_slot(self, slot: int) -> SessionName:
        return SessionName(self.prefix, self.workspace_hash, slot)

    def belongs_to(self, abs_workspace: str) -> bool:
        return self.workspace_hash == workspace_hash(abs_workspace)
