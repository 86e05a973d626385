"""The session model: what coi knows about one session container, derived in one place.

Every module that needs "the session of this instance" (cleanup, bulk save, attach, tmux, list)
builds a `Session` with `session_of`, from the `user.coi.*` keys stamped at launch and the
config, so the user, uid and home inside are the same everywhere (never a constant).
"""

from __future__ import annotations

import msgspec

from coi_async.config import Config
from coi_async.incus.models import Instance
from coi_async.naming import (
    KEY_PERSISTENT,
    KEY_SESSION,
    KEY_SLOT,
    KEY_TOOL,
    KEY_UID,
    KEY_USER,
    KEY_WORKSPACE,
    SessionName,
)
from coi_async.orchestration.sessions.store import SessionMetadata, now_rfc3339

LOCAL_REMOTE = "local"


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """One session container and the identity of the session it runs."""

    container: str
    slot: int
    workspace: str  # absolute host path; "" when the instance does not say
    tool: str
    session_id: str  # coi's session id (uuid); "" when the instance carries none
    persistent: bool
    uid: int  # the uid (and gid) the session's processes run as inside
    user: str
    home: str
    running: bool = False
    created_at: str = ""  # RFC 3339, from incusd
    remote: str = LOCAL_REMOTE


def home_of(user: str, uid: int) -> str:
    return "/root" if uid == 0 else f"/home/{user}"


def user_of_uid(code_user: str, uid: int) -> str:
    """The user the session's processes run as: root for uid 0, else the configured code user."""
    return "root" if uid == 0 else code_user


def new_session(
    config: Config, *, workspace: str, session_id: str, persistent: bool, container: str = "", slot: int = 0
) -> Session:
    """A session coi is about to launch: its user, uid and home from the config, as launch stamps
    them on the instance (so `session_of` of that instance later says the same)."""
    uid = config.incus.code_uid
    user = user_of_uid(config.incus.code_user, uid)
    return Session(
        container=container,
        slot=slot,
        workspace=workspace,
        tool=config.tool.name,
        session_id=session_id,
        persistent=persistent,
        uid=uid,
        user=user,
        home=home_of(user, uid),
    )


def session_of(instance: Instance, config: Config) -> Session | None:
    """The session an instance is, from the keys coi stamped on it (and the config for what an
    older or foreign instance lacks); None when the name is not one of coi's session names."""
    name = SessionName.parse(instance.name, config.container_prefix)
    if name is None:
        return None
    keys = instance.config
    uid = _int(keys.get(KEY_UID, ""), config.incus.code_uid)
    user = keys.get(KEY_USER, "") or user_of_uid(config.incus.code_user, uid)
    return Session(
        container=instance.name,
        slot=_int(keys.get(KEY_SLOT, ""), name.slot),
        workspace=keys.get(KEY_WORKSPACE, ""),
        tool=keys.get(KEY_TOOL, "") or config.tool.name,
        session_id=keys.get(KEY_SESSION, ""),
        persistent=keys.get(KEY_PERSISTENT, "false") == "true",
        uid=uid,
        user=user,
        home=home_of(user, uid),
        running=instance.running,
        created_at=instance.created_at,
    )


def _int(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def started_metadata(
    session: Session, *, tool: str, image: str, network: str, cli_session_id: str = "", location: str = ""
) -> SessionMetadata:
    """The store's record of a session that starts now."""
    now = now_rfc3339()
    return SessionMetadata(
        session_id=session.session_id,
        container_name=session.container,
        persistent=session.persistent,
        workspace=session.workspace,
        saved_at=now,
        tool=tool,
        slot=session.slot,
        image=image,
        created_at=now,
        cli_session_id=cli_session_id,
        network=network,
        location=location,
    )
