"""One view of every session: status, CPU, memory, disk, limits and uptime, from a single
`recursion=2` listing of the project per refresh, never one request per container.

CPU is a percentage of one CPU over the time between two samples (incusd reports CPU time);
without an earlier sample it is unknown. The agent's own state comes from the record its tool's
hooks write (`fleet.agent`, one small read per running session of such a tool); for other tools
it is `unknown`, and `exited` once the container is not running.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence

import msgspec

from coi_async.agent_state import EXITED, UNKNOWN, AgentState
from coi_async.config import Config
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.naming import is_session_listed
from coi_async.orchestration.fleet.agent import agent_states
from coi_async.orchestration.network.plan import KEY_NETWORK
from coi_async.orchestration.sessions.model import session_of

SORT_KEYS = ("name", "state", "cpu", "memory", "age")


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    taken: float  # monotonic seconds
    instances: tuple[Instance, ...]


class FleetRow(msgspec.Struct, frozen=True, kw_only=True):
    container: str
    workspace: str
    slot: int
    tool: str
    status: str
    agent_state: str
    cpu_percent: float | None  # of one CPU; None before a second sample
    memory_bytes: int
    disk_bytes: int
    cpu_limit: str  # "" when unlimited
    memory_limit: str
    uptime_s: float | None  # None when not running
    network: str
    location: str
    remote: str = "local"
    agent_since: float | None = None  # unix seconds the agent has been in its state since
    agent_message: str = ""  # what the tool said with it (a notification), printable and short


async def take_sample(incus: IncusClient, prefix: str) -> Sample:
    instances = await incus.list_instances(recursion=2)
    return Sample(
        taken=time.monotonic(), instances=tuple(i for i in instances if is_session_listed(i.name, prefix))
    )


def _uptime(started_at: str, now: dt.datetime) -> float | None:
    if not started_at or started_at.startswith("0001-"):
        return None
    try:
        started = dt.datetime.fromisoformat(started_at)
    except ValueError:
        return None
    return max((now - started).total_seconds(), 0.0)


async def sample_agents(incus: IncusClient, sample: Sample, config: Config) -> dict[str, AgentState]:
    """The agent state of every session of `sample`."""
    sessions = [s for i in sample.instances if (s := session_of(i, config)) is not None]
    return await agent_states(incus, sessions, parallel=config.defaults.parallel)


def rows(
    sample: Sample,
    previous: Sample | None,
    config: Config,
    agents: Mapping[str, AgentState] | None = None,
    *,
    remote: str = "local",
) -> list[FleetRow]:
    """The sessions of `sample` (on `remote`); CPU from the CPU time used since `previous`, agent
    states from `agents` (without one: `unknown`, or `exited` when not running)."""
    before: dict[str, int] = {}
    if previous is not None:
        before = {i.name: i.state.cpu.usage for i in previous.instances if i.state and i.state.cpu}
    elapsed = sample.taken - previous.taken if previous is not None else 0.0
    now = dt.datetime.now(dt.UTC)
    found: list[FleetRow] = []
    for inst in sample.instances:
        session = session_of(inst, config)
        if session is None:
            continue
        state = inst.state
        running = inst.running
        agent = (agents or {}).get(inst.name) or AgentState(state=UNKNOWN if running else EXITED)
        cpu: float | None = None
        if running and state and state.cpu and inst.name in before and elapsed > 0:
            cpu = max(state.cpu.usage - before[inst.name], 0) / (elapsed * 1e9) * 100
        found.append(
            FleetRow(
                container=inst.name,
                workspace=session.workspace,
                slot=session.slot,
                tool=session.tool,
                status=inst.status,
                agent_state=agent.state,
                agent_since=agent.since,
                agent_message=agent.message,
                cpu_percent=None if cpu is None else round(cpu, 1),
                memory_bytes=state.memory.usage if state and state.memory and running else 0,
                disk_bytes=sum(d.usage for d in (state.disk or {}).values()) if state else 0,
                cpu_limit=inst.expanded_config.get("limits.cpu", ""),
                memory_limit=inst.expanded_config.get("limits.memory", ""),
                uptime_s=_uptime(state.started_at, now) if state and running else None,
                network=inst.config.get(KEY_NETWORK, ""),
                location=inst.location,
                remote=remote,
            )
        )
    return found


def ordered(found: Sequence[FleetRow], key: str, *, workspace: str = "") -> list[FleetRow]:
    """Filtered to a workspace (a path prefix) and sorted: biggest first for cpu and memory,
    oldest first for age."""
    chosen = [r for r in found if not workspace or r.workspace.startswith(workspace)]
    if key == "cpu":
        return sorted(chosen, key=lambda r: -(r.cpu_percent or 0.0))
    if key == "memory":
        return sorted(chosen, key=lambda r: -r.memory_bytes)
    if key == "age":
        return sorted(chosen, key=lambda r: -(r.uptime_s or 0.0))
    if key == "state":
        return sorted(chosen, key=lambda r: (r.agent_state, r.container))
    return sorted(chosen, key=lambda r: r.container)
