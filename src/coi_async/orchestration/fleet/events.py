"""`coi events`: what one stream of coi's sessions is made of, and how incusd's events become it.

Every event names the remote it came from (`local`, or a name `coi remote add` gave), so one
stream can follow several incusd servers at once (`fleet.follow`). Instance lifecycle events come
from incusd's `/1.0/events`, egress refusals from the sessions' connection logs (`egress-refused`,
with the host and why; local only: the egress daemon runs beside coi), agent states from the
records the tools' hooks write (`agent-state`). Every (re)connection to a remote starts with a
`resync` event carrying every session of it as it is now, the baseline the changes that follow
are told against.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

import msgspec

from coi_async.agent_state import RECORD_DIR, RECORD_NAME, AgentState
from coi_async.config import Config
from coi_async.incus.models import Event, Instance, LifecycleEvent
from coi_async.orchestration.sessions.model import session_of
from coi_async.remotes import LOCAL

_LIFECYCLE = msgspec.json.Decoder(LifecycleEvent)
_INSTANCES = "/1.0/instances/"
AGENT_CHANGE = "agent-state"
RESYNC = "resync"
DISCONNECTED = "disconnected"
EGRESS_REFUSED = "egress-refused"
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
    # Where it happened: `local`, or the name of a remote (`coi remote add`); always there.
    remote: str
    container: str = ""
    workspace: str = ""
    slot: int = 0
    project: str = ""
    sessions: list[SessionState] | None = None  # resync: every session as it is now
    detail: str = ""  # disconnected: why; egress-refused: the reason
    host: str = ""  # egress-refused: the host and port asked for
    port: int = 0
    state: str = ""  # agent-state: the agent's state now, and the one before
    previous: str = ""
    since: float | None = None
    message: str = ""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instance_of(source: str) -> tuple[str, str]:
    """The instance name and project of a lifecycle event's source (its URL)."""
    parts = urlsplit(source)
    if not parts.path.startswith(_INSTANCES):
        return "", ""
    name = parts.path[len(_INSTANCES) :].split("/", 1)[0]
    return name, parse_qs(parts.query).get("project", [""])[0]


def resync(
    instances: Iterable[Instance],
    config: Config,
    project: str,
    agents: dict[str, AgentState],
    *,
    remote: str = LOCAL,
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
    return FleetEvent(type=RESYNC, time=now(), project=project, remote=remote, sessions=sessions)


def _our_read(lifecycle: LifecycleEvent) -> bool:
    """Whether the event is incusd telling of coi's own read of an agent-state record (one a
    second per session while anything polls them: noise)."""
    if lifecycle.action != "instance-file-retrieved":
        return False
    path = (lifecycle.context or {}).get("path")
    return isinstance(path, str) and path.endswith(_RECORD_SUFFIX)


def session_event(
    event: Event, config: Config, known: dict[str, Instance], *, remote: str = LOCAL
) -> FleetEvent | None:
    """The stream's event for one of incusd's, or None when it is not about one of coi's sessions
    (or is noise)."""
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
        time=event.timestamp or now(),
        container=name,
        workspace=session.workspace,
        slot=session.slot,
        project=project or event.project,
        remote=remote,
    )
