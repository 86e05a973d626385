"""`coi events`' stream: one or more incusd servers followed at once, merged, never missing a state.

Each `Source` (`local`, or a remote `coi remote add` added) is followed by a task of its own in
one task group: it connects, subscribes to incusd's lifecycle events, lists the sessions and
tells them in a `resync`, then passes on their events, and polls their agents' states about once
a second (`AGENT_POLL_S`: one listing of the project and one small file read per running session
whose tool reports its state; an `agent-state` event says when one changed, with the state
before it, `previous`, "" for a session not seen before). When the connection fails or drops it
tells a `disconnected` event (with why, once: again only when the reason changes, so a remote
that stays down is not told at every attempt), waits a growing pause (up to `_BACKOFF_MAX_S`)
and connects again, afresh (a remote changed or removed meanwhile is seen), while the other
sources go on. The egress daemon's refusals are a source's too, the one it runs beside (local).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import anyio

from coi_async.agent_state import EXITED, AgentState
from coi_async.config import Config
from coi_async.errors import CoiError, IncusUnavailableError
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.naming import SessionName
from coi_async.orchestration.fleet.agent import agent_states
from coi_async.orchestration.fleet.events import (
    AGENT_CHANGE,
    DISCONNECTED,
    EGRESS_REFUSED,
    FleetEvent,
    now,
    resync,
    session_event,
)
from coi_async.orchestration.network.live import FOLLOW_POLL_S, LogTail, log_paths
from coi_async.orchestration.retry import Retry
from coi_async.orchestration.sessions.model import Session, session_of

_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 10.0
_BUFFERED = 256
AGENT_POLL_S = 1.0

Send = Callable[[FleetEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Source:
    """One incusd the stream follows."""

    remote: str  # its name in the events: `local`, or the remote's
    # A client of it, made afresh for every (re)connection; a CoiError says why there is none.
    connect: Callable[[], AbstractAsyncContextManager[IncusClient]]
    egress: bool = False  # whether the egress daemon's refusals are this source's (it runs beside it)
    # How long subscribing and listing the sessions may take before the attempt counts as failed
    # (None: no deadline but the transport's own).
    answer_s: float | None = None


@asynccontextmanager
async def fleet_events(sources: Sequence[Source], config: Config) -> AsyncIterator[AsyncIterator[FleetEvent]]:
    """The merged stream of every source while the context is open, as the events come."""
    send, receive = anyio.create_memory_object_stream[FleetEvent](_BUFFERED)
    async with anyio.create_task_group() as tg, send, receive:
        for source in sources:
            tg.start_soon(_follow, source, config, send.send, name=f"events:{source.remote}")
            if source.egress:
                tg.start_soon(_egress, source, config, send.send, name=f"egress:{source.remote}")
        yield receive
        tg.cancel_scope.cancel()


async def _follow(source: Source, config: Config, send: Send) -> None:
    """One source, for ever: connected, its events; not, a `disconnected` event and a pause."""
    retry = Retry(_BACKOFF_START_S, _BACKOFF_MAX_S)
    while True:
        try:
            async with source.connect() as incus:
                await _connected(incus, source, config, send, retry)
        except CoiError as exc:
            reason = " ".join(exc.message.split())
            if retry.tell(reason):
                await send(FleetEvent(type=DISCONNECTED, time=now(), remote=source.remote, detail=reason))
        await anyio.sleep(retry.next_pause())


async def _connected(incus: IncusClient, source: Source, config: Config, send: Send, retry: Retry) -> None:
    """The resync, then the lifecycle events and the agent states' changes, until the connection
    fails (a CoiError; incusd's event stream never just ends)."""
    remote = source.remote
    with anyio.CancelScope() as answer:
        if source.answer_s is not None:
            answer.deadline = anyio.current_time() + source.answer_s
        async with incus.events(("lifecycle",)) as stream:
            known = {i.name: i for i in await incus.list_instances()}
            answer.deadline = math.inf  # the agents' records have deadlines of their own
            agents = await _agent_states(incus, config, known.values())
            # Each session's last agent state told (by the resync or a change).
            told = {name: agent.state for name, agent in agents.items()}
            await send(resync(known.values(), config, incus.project, agents, remote=remote))
            retry.succeeded()
            failed: CoiError | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(_forward, _agent_changes(incus, config, told, remote), send)
                try:
                    async for event in stream:
                        found = session_event(event, config, known, remote=remote)
                        if found is None:
                            continue
                        if found.type in ("instance-created", "instance-started"):
                            # Its keys (workspace, slot) for this and later events.
                            try:
                                known[found.container] = await incus.get_instance(found.container)
                            except CoiError:
                                pass
                            found = session_event(event, config, known, remote=remote) or found
                        await send(found)
                except CoiError as exc:
                    failed = exc
                tg.cancel_scope.cancel()
            if failed is not None:
                raise failed
    if answer.cancelled_caught:
        raise IncusUnavailableError(f"no answer from incusd within {source.answer_s:g}s")


async def _forward(events: AsyncIterator[FleetEvent], send: Send) -> None:
    async for event in events:
        await send(event)


async def _agent_states(
    incus: IncusClient, config: Config, instances: Iterable[Instance]
) -> dict[str, AgentState]:
    sessions = [s for i in instances if (s := session_of(i, config)) is not None]
    return await agent_states(incus, sessions, parallel=config.defaults.parallel)


async def _agent_changes(
    incus: IncusClient, config: Config, told: dict[str, str], remote: str
) -> AsyncIterator[FleetEvent]:
    """An `agent-state` event whenever a session's agent state differs from the one last told."""
    sessions: dict[str, Session] = {}  # as last listed: a gone one's workspace and slot
    while True:
        await anyio.sleep(AGENT_POLL_S)
        try:
            instances = {i.name: i for i in await incus.list_instances()}
        except CoiError:
            continue  # the lifecycle stream tells the disconnection
        for inst in instances.values():
            if (found := session_of(inst, config)) is not None:
                sessions[inst.name] = found
        states = await agent_states(
            incus, [sessions[n] for n in instances if n in sessions], parallel=config.defaults.parallel
        )
        gone = {n: told.pop(n) for n in [n for n in told if n not in instances]}
        changes: list[tuple[str, AgentState, str | None]] = []
        for name, agent in sorted(states.items()):
            previous = told.get(name)
            if previous != agent.state:
                told[name] = agent.state
                changes.append((name, agent, previous))
        # Gone: exited, unless it was already (and forgotten).
        changes += [(n, AgentState(state=EXITED), p) for n, p in sorted(gone.items()) if p != EXITED]
        for name, agent, previous in changes:
            session = sessions.get(name)
            parsed = SessionName.parse(name, config.container_prefix)
            yield FleetEvent(
                type=AGENT_CHANGE,
                time=now(),
                container=name,
                workspace=session.workspace if session else "",
                slot=session.slot if session else (parsed.slot if parsed else 0),
                project=incus.project,
                remote=remote,
                state=agent.state,
                previous=previous or "",
                since=agent.since,
                message=agent.message,
            )
        for name in [n for n in sessions if n not in instances]:
            del sessions[name]


async def _egress(source: Source, config: Config, send: Send) -> None:
    """The egress daemon's refusals, for as long as the stream runs (a client to name their
    sessions' workspaces; without one, tried again later)."""
    while True:
        try:
            async with source.connect() as incus:
                await _forward(_egress_refusals(incus, config, source.remote), send)
        except CoiError:
            pass
        await anyio.sleep(_BACKOFF_MAX_S)


async def _egress_refusals(incus: IncusClient, config: Config, remote: str) -> AsyncIterator[FleetEvent]:
    """What the egress daemon refused, from the sessions' logs (new logs included)."""
    project = incus.project
    tail = LogTail(log_paths(config, project, None))
    workspaces: dict[str, str] = {}
    while True:
        await anyio.sleep(FOLLOW_POLL_S)
        for path in log_paths(config, project, None):
            tail.add(path)
        for record in tail.new_records():
            if record.decision != "refused":
                continue
            if record.session not in workspaces:  # once per container, however many refusals
                try:
                    inst = await incus.get_instance(record.session)
                except CoiError:
                    inst = Instance(name=record.session)
                session = session_of(inst, config)
                workspaces[record.session] = session.workspace if session else ""
            name = SessionName.parse(record.session, config.container_prefix)
            yield FleetEvent(
                type=EGRESS_REFUSED,
                time=record.time,
                container=record.session,
                workspace=workspaces[record.session],
                slot=name.slot if name else 0,
                project=record.project or project,
                remote=remote,
                host=record.host,
                port=record.port,
                detail=record.reason,
            )
