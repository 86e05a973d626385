"""`coi events`: one stream of what happens to coi's sessions, that never misses a state.

Instance lifecycle events come from incusd's `/1.0/events`, egress refusals from the sessions'
connection logs (`egress-refused`, with the host and why). Every (re)connection starts with a
`resync` event carrying every session as it is now, so a consumer that missed events while the
stream was down (incusd restarted, the connection dropped) has the current state again; the
stream reconnects by itself with a growing pause (up to `_BACKOFF_MAX_S`).

Agent states (`fleet.agent`) are polled about once a second (`AGENT_POLL_S`: one listing of the
project and one small file read per running session whose tool reports its state); an
`agent-state` event says when one changed, with the state before it (`previous`, "" for a
session not seen before). The resync carries every session's agent state too, and is the
baseline the changes are told against.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec

from coi_async.agent_state import EXITED, RECORD_DIR, RECORD_NAME, AgentState
from coi_async.config import Config
from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.incus.models import Event, Instance, LifecycleEvent
from coi_async.naming import SessionName
from coi_async.orchestration.fleet.agent import agent_states
from coi_async.orchestration.network.live import FOLLOW_POLL_S, LogTail, log_paths
from coi_async.orchestration.sessions.model import Session, session_of

_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 10.0
_LIFECYCLE = msgspec.json.Decoder(LifecycleEvent)
_INSTANCES = "/1.0/instances/"
_BUFFERED = 256
AGENT_POLL_S = 1.0
AGENT_CHANGE = "agent-state"
_RECORD_SUFFIX = f"/{RECORD_DIR}/{RECORD_NAME}"


class SessionState(msgspec.Struct, frozen=True, kw_only=True):
    container: str
    workspace: str
    slot: int
    status: str
    agent_state: str = ""
    agent_since: float | None = None


class FleetEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    type: str  # the lifecycle action (instance-started, instance-stopped, ...), "resync", "disconnected"
    time: str
    container: str = ""
    workspace: str = ""
    slot: int = 0
    project: str = ""
    remote: str = "local"
    sessions: list[SessionState] | None = None  # resync: every session as it is now
    detail: str = ""  # disconnected: why; egress-refused: the reason
    host: str = ""  # egress-refused: the host and port asked for
    port: int = 0
    state: str = ""  # agent-state: the agent's state now, and the one before
    previous: str = ""
    since: float | None = None
    message: str = ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instance_of(source: str) -> tuple[str, str]:
    """The instance name and project of a lifecycle event's source (its URL)."""
    parts = urlsplit(source)
    if not parts.path.startswith(_INSTANCES):
        return "", ""
    name = parts.path[len(_INSTANCES) :].split("/", 1)[0]
    return name, parse_qs(parts.query).get("project", [""])[0]


def _resync(
    instances: Iterable[Instance], config: Config, project: str, agents: dict[str, AgentState]
) -> FleetEvent:
    sessions = []
    for inst in sorted(instances, key=lambda i: i.name):
        session = session_of(inst, config)
        if session is not None:
            agent = agents.get(inst.name)
            sessions.append(
                SessionState(
                    container=inst.name,
                    workspace=session.workspace,
                    slot=session.slot,
                    status=inst.status,
                    agent_state=agent.state if agent else "",
                    agent_since=agent.since if agent else None,
                )
            )
    return FleetEvent(type="resync", time=_now(), project=project, sessions=sessions)


def _our_read(lifecycle: LifecycleEvent) -> bool:
    """Whether the event is incusd telling of coi's own read of an agent-state record (one a
    second per session while anything polls them: noise)."""
    if lifecycle.action != "instance-file-retrieved":
        return False
    path = (lifecycle.context or {}).get("path")
    return isinstance(path, str) and path.endswith(_RECORD_SUFFIX)


def _session_event(event: Event, config: Config, known: dict[str, Instance]) -> FleetEvent | None:
    try:
        lifecycle = _LIFECYCLE.decode(event.metadata)
    except msgspec.DecodeError:
        return None
    if not lifecycle.action.startswith("instance-") or _our_read(lifecycle):
        return None
    name, project = _instance_of(lifecycle.source)
    if not name.startswith(config.container_prefix):
        return None
    inst = known.get(name) or Instance(name=name)
    session = session_of(inst, config)
    if session is None:
        return None
    return FleetEvent(
        type=lifecycle.action,
        time=event.timestamp or _now(),
        container=name,
        workspace=session.workspace,
        slot=session.slot,
        project=project or event.project,
    )


@asynccontextmanager
async def fleet_events(incus: IncusClient, config: Config) -> AsyncIterator[AsyncIterator[FleetEvent]]:
    """The stream while the context is open: incusd's events and the egress refusals, as they
    come."""
    send, receive = anyio.create_memory_object_stream[FleetEvent](_BUFFERED)

    async def forward(source: AsyncIterator[FleetEvent]) -> None:
        async for event in source:
            await send.send(event)

    # Each session's last agent state told (by a resync or a change), shared by both sources.
    told: dict[str, str] = {}
    async with anyio.create_task_group() as tg, send, receive:
        tg.start_soon(forward, _lifecycle_events(incus, config, told))
        tg.start_soon(forward, _egress_refusals(incus, config))
        tg.start_soon(forward, _agent_changes(incus, config, told))
        yield receive
        tg.cancel_scope.cancel()


async def _egress_refusals(incus: IncusClient, config: Config) -> AsyncIterator[FleetEvent]:
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
                type="egress-refused",
                time=record.time,
                container=record.session,
                workspace=workspaces[record.session],
                slot=name.slot if name else 0,
                project=record.project or project,
                host=record.host,
                port=record.port,
                detail=record.reason,
            )


async def _agent_states(
    incus: IncusClient, config: Config, instances: Iterable[Instance]
) -> dict[str, AgentState]:
    sessions = [s for i in instances if (s := session_of(i, config)) is not None]
    return await agent_states(incus, sessions, parallel=config.defaults.parallel)


async def _agent_changes(
    incus: IncusClient, config: Config, told: dict[str, str]
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
                time=_now(),
                container=name,
                workspace=session.workspace if session else "",
                slot=session.slot if session else (parsed.slot if parsed else 0),
                project=incus.project,
                state=agent.state,
                previous=previous or "",
                since=agent.since,
                message=agent.message,
            )
        for name in [n for n in sessions if n not in instances]:
            del sessions[name]


async def _lifecycle_events(
    incus: IncusClient, config: Config, told: dict[str, str]
) -> AsyncIterator[FleetEvent]:
    pause = _BACKOFF_START_S
    while True:
        try:
            async with incus.events(("lifecycle",)) as stream:
                known = {i.name: i for i in await incus.list_instances()}
                agents = await _agent_states(incus, config, known.values())
                told.clear()
                told.update((name, agent.state) for name, agent in agents.items())
                yield _resync(known.values(), config, incus.project, agents)
                pause = _BACKOFF_START_S
                async for event in stream:
                    found = _session_event(event, config, known)
                    if found is None:
                        continue
                    if found.type in ("instance-created", "instance-started"):
                        # Its keys (workspace, slot) for this and later events.
                        try:
                            known[found.container] = await incus.get_instance(found.container)
                        except CoiError:
                            pass
                        found = _session_event(event, config, known) or found
                    yield found
        except CoiError as exc:
            yield FleetEvent(type="disconnected", time=_now(), detail=exc.message)
        await anyio.sleep(pause)
        pause = min(pause * 2, _BACKOFF_MAX_S)
