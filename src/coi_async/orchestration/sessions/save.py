"""One save of a session's data: the tool's state pulled out of its container into the store,
with its metadata, for every flow that saves (a shell's cleanup, attach, bulk shutdown/kill/clean).

The copy itself is `archive.save_session_data` (atomic: the previous copy survives any failure);
this module decides which session the data belongs to and keeps the metadata true.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from coi_async.config.model import Limits
from coi_async.errors import CoiError, SessionError, coi_error
from coi_async.incus import IncusClient
from coi_async.orchestration.files.limits import copy_caps, limit_note
from coi_async.orchestration.sessions import archive
from coi_async.orchestration.sessions.model import Session
from coi_async.orchestration.sessions.store import (
    SessionMetadata,
    SessionStore,
    check_session_id,
    discover_cli_session_id,
    new_session_id,
    now_rfc3339,
)
from coi_async.tools import Tool


class SaveTimedOutError(SessionError):
    """The copy did not finish within its bound; the store keeps its previous copy."""

    def __init__(self, bound_s: float) -> None:
        super().__init__(f"saving session data took over {bound_s:g}s")
        self.bound_s = bound_s


class Saved(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    # Where the data went; None when the container has no state directory (nothing to lose).
    session_dir: Path | None
    skipped: tuple[str, ...] = ()  # entries left out (links, unsafe names)
    metadata: SessionMetadata | None = None


def session_id_for(session: Session, store: SessionStore) -> str:
    """The session a container's data belongs to: the id coi stamped on it, else the newest
    saved session naming the container, else a new one (data of a container coi did not start
    is kept all the same)."""
    with contextlib.suppress(CoiError):
        return check_session_id(session.session_id)
    known = store.for_container(session.container)
    return known[0].id if known else new_session_id()


async def save_session(
    incus: IncusClient,
    session: Session,
    store: SessionStore,
    tool: Tool,
    *,
    bound_s: float,
    running: bool | None = None,
    metadata: SessionMetadata | None = None,
    limits: Limits | None = None,
) -> Saved:
    """Pull `<home>/<tool.config_dir>` into the store and write the session's metadata.

    `metadata` is what the caller knows of the session already (else the stored one, else what
    the instance says); `limits` bound the copy (the config's `[limits]`, else the defaults).
    Raises CoiError when the data exists but could not be saved, whatever the container's data
    did (SaveTimedOutError when not within `bound_s`); the store then keeps its previous copy.
    """
    session_id = await anyio.to_thread.run_sync(session_id_for, session, store)
    if not tool.saves_state:
        return Saved(session_id=session_id, session_dir=None)
    session_dir = store.session_dir(session_id)
    try:
        with anyio.fail_after(bound_s):
            place = archive.StatePlace(session.container, session.home, tool.config_dir)
            caps = copy_caps(limits or Limits())
            outcome = await archive.save_session_data(incus, place, session_dir, caps=caps, running=running)
    except TimeoutError:
        raise SaveTimedOutError(bound_s) from None
    except OSError as exc:
        raise CoiError(f"could not save session data: {exc.strerror or exc}") from exc
    except Exception as exc:
        # Also from inside the task groups of a files-API walk: one item's failure, as data.
        error = coi_error(exc)
        if error is None:
            raise
        message = f"could not save session data: {error}{limit_note(error)}"
        raise CoiError(message, hint=error.hint) from exc
    if outcome.missing:
        return Saved(session_id=session_id, session_dir=None)
    meta = await anyio.to_thread.run_sync(_write_metadata, session, store, tool, session_id, metadata)
    return Saved(session_id=session_id, session_dir=session_dir, skipped=outcome.skipped, metadata=meta)


def _write_metadata(
    session: Session, store: SessionStore, tool: Tool, session_id: str, known: SessionMetadata | None
) -> SessionMetadata:
    meta = (
        known
        or store.load_metadata(session_id)
        or SessionMetadata(
            session_id=session_id,
            container_name=session.container,
            persistent=session.persistent,
            workspace=session.workspace,
            tool=tool.name,
            slot=session.slot,
            created_at=session.created_at,
        )
    )
    cli_id = discover_cli_session_id(tool, store.session_dir(session_id))
    meta = msgspec.structs.replace(
        meta,
        container_name=session.container,
        saved_at=now_rfc3339(),
        cli_session_id=cli_id or meta.cli_session_id,
    )
    store.save_metadata(meta)
    return meta
