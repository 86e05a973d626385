"""`coi events`: one stream of what happens to coi's sessions, that never misses a state.

Instance lifecycle events come from incusd's `/1.0/events`, egress refusals from the sessions'
connection logs (`egress-refused`, with the host and why). Every (re)connection starts with a
`resync` event carrying every session as it is now, so a consumer that missed events while the
stream was down (incusd restarted, the connection dropped) has the current state again; the
stream reconnects by itself with a growing pause (up to `_BACKOFF_MAX_S`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec

from coi_async.config import Config
from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.incus.models import Event, Instance, LifecycleEvent
from coi_async.naming import SessionName
from coi_async.orchestration.network.live import FOLLOW_POLL_S, LogTail, log_paths
from coi_async.orchestration.sessions.model import session_of

_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 10.0
_LIFECYCLE = msgspec.json.Decoder(LifecycleEvent)
_INSTANCES = "/1.0/instances/"
_BUFFERED = 256


class SessionState(msgspec.Struct, frozen=True, kw_only=True):
    container: str
    workspace: str
    slot: int
    status: str


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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instance_of(source: str) -> tuple[str, str]:
    """The instance name and project of a lifecycle event's source (its URL)."""
    parts = urlsplit(source)
    if not parts.path.startswith(_INSTANCES):
        return "", ""
    name = parts.path[len(_INSTANCES) :].split("/", 1)[0]
    return name, parse_qs(parts.query).get("project", [""])[0]


def _resync(instances: Iterable[Instance], config: Config, project: str) -> FleetEvent:
    sessions = []
    for inst in sorted(instances, key=lambda i: i.name):
        session = session_of(inst, config)
        if session is not None:
            sessions.append(
                SessionState(
                    container=inst.name, workspace=session.workspace, slot=session.slot, status=inst.status
                )
            )
    return FleetEvent(type="resync", time=_now(), project=project, sessions=sessions)


def _session_event(event: Event, config: Config, known: dict[str, Instance]) -> FleetEvent | None:
    try:
        lifecycle = _LIFECYCLE.decode(event.metadata)
    except msgspec.DecodeError:
        return None
    if not lifecycle.action.startswith("instance-"):
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

    async with anyio.create_task_group() as tg, send, receive:
        tg.start_soon(forward, _lifecycle_events(incus, config))
        tg.start_soon(forward, _egress_refusals(incus, config))
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


async def _lifecycle_events(incus: IncusClient, config: Config) -> AsyncIterator[FleetEvent]:
    pause = _BACKOFF_START_S
    while True:
        try:
            async with incus.events(("lifecycle",)) as stream:
                known = {i.name: i for i in await incus.list_instances()}
                yield _resync(known.values(), config, incus.project)
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
