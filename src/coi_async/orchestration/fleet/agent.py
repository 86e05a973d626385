"""Every session's agent state, read from the record its tool's hooks write in the container.

The record is the agent's to write (it runs as root in there), so it is read through the files
API, at most `agent_state.RECORD_MAX_BYTES`, never through a symbolic link (the files API
answers a link with the link itself: anything but a regular file is `unknown`), never when it
is empty (a fifo looks like an empty file, and reading one hangs), and decoded strictly
(`agent_state.parse_record`). One container's bad record, slow files API or error
never holds up or fails the others: they are read through the one bounded runner, each within
`_READ_S`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from coi_async.agent_state import (
    EXITED,
    RECORD_MAX_BYTES,
    STARTING,
    UNKNOWN,
    AgentState,
    parse_record,
    record_path,
)
from coi_async.errors import CoiError, InstanceNotFoundError, NotFoundError
from coi_async.incus import IncusClient
from coi_async.orchestration.runner import ItemContext, run_bulk
from coi_async.orchestration.sessions.model import Session
from coi_async.tools import TOOLS

_READ_S = 3.0
_DEFAULT_PARALLEL = 16


def reports_state(session: Session) -> bool:
    """Whether the session's tool writes a record coi can read: a coi session (it has a session
    id) of a tool with hooks, whose container runs."""
    tool = TOOLS.get(session.tool)
    return session.running and bool(session.session_id) and tool is not None and tool.agent_state == "hooks"


def without_reading(session: Session) -> AgentState | None:
    """The state when nothing needs to be read: `exited` for a container that does not run,
    `unknown` for a tool that reports nothing; None when the record must be read."""
    if not session.running:
        return AgentState(state=EXITED)
    if not reports_state(session):
        return AgentState(state=UNKNOWN)
    return None


async def read_agent_state(incus: IncusClient, session: Session) -> AgentState:
    """The session's state as its record says; never raises a CoiError."""
    known = without_reading(session)
    if known is not None:
        return known
    path = record_path(session.home)
    try:
        # A HEAD first: a GET of a fifo (which incusd calls a file, of size 0) would hang until
        # someone writes it, and one of a huge file need not be made.
        info = await incus.stat_file(session.container, path)
        if info.type != "file" or not info.size or info.size > RECORD_MAX_BYTES:
            return AgentState(state=UNKNOWN)
        content = await incus.pull_file(session.container, path, max_bytes=RECORD_MAX_BYTES)
    except InstanceNotFoundError:
        return AgentState(state=EXITED)
    except NotFoundError:
        return AgentState(state=STARTING)
    except CoiError:  # too large, a directory, incusd's trouble: nothing to believe
        return AgentState(state=UNKNOWN)
    if content.info.type != "file":  # swapped for a link since the HEAD
        return AgentState(state=UNKNOWN)
    return parse_record(content.data, now=time.time())


async def agent_states(
    incus: IncusClient, sessions: Iterable[Session], *, parallel: int = _DEFAULT_PARALLEL
) -> dict[str, AgentState]:
    """Every session's state by container name; a record not read in time is `unknown`."""
    found: dict[str, AgentState] = {}
    to_read: dict[str, Session] = {}
    for session in sessions:
        known = without_reading(session)
        if known is None:
            to_read[session.container] = session
        else:
            found[session.container] = known

    async def one(ctx: ItemContext) -> None:
        found[ctx.name] = await read_agent_state(incus, to_read[ctx.name])

    if to_read:
        await run_bulk(sorted(to_read), one, limit=max(parallel, 1), per_item_s=_READ_S)
    for name in to_read:
        found.setdefault(name, AgentState(state=UNKNOWN))
    return found
