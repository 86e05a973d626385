"""`coi wait`: until each named session's agent reaches a state (waiting, idle or exited).

Polled (`POLL_S`): one listing of the project, then the records of the sessions still waited
for (`fleet.agent`). `exited` is reached when the container is stopped or gone, or its tool
reports that it exited.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import anyio

from coi_async.agent_state import EXITED, IDLE, WAITING
from coi_async.config import Config
from coi_async.errors import CoiError, UsageError
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.orchestration.fleet.agent import agent_states
from coi_async.orchestration.sessions.model import session_of

WAIT_STATES = (WAITING, IDLE, EXITED)
POLL_S = 0.5
# How long the last look (at the deadline) may take before the wait gives up without it.
_LAST_LOOK_S = 5.0


async def check_known(incus: IncusClient, names: Sequence[str]) -> None:
    """UsageError naming the first of `names` that is no container of the project."""
    known = {i.name for i in await incus.list_instances()}
    for name in names:
        if name not in known:
            raise UsageError(f"unknown container '{name}'")


async def _reached(
    incus: IncusClient, config: Config, instances: dict[str, Instance], names: set[str], state: str
) -> set[str]:
    stopped = {n for n in names if n not in instances or not instances[n].running}
    sessions = [s for n in names - stopped if (s := session_of(instances[n], config)) is not None]
    found = await agent_states(incus, sessions, parallel=config.defaults.parallel)
    reached = {n for n, agent in found.items() if agent.state == state}
    # A stopped or gone session has exited; it waits for nothing any more, but never gets there.
    return reached | stopped if state == EXITED else reached


async def wait_for_state(
    incus: IncusClient,
    config: Config,
    names: Sequence[str],
    state: str,
    *,
    timeout_s: float | None = None,
    poll_s: float = POLL_S,
) -> list[str]:
    """Wait until every session of `names` has reached `state` (each once is enough); the
    names that had not when `timeout_s` passed (sorted), [] when all did."""
    if state not in WAIT_STATES:
        raise UsageError(f"cannot wait for state '{state}' (one of {', '.join(WAIT_STATES)})")
    pending = set(names)
    deadline = anyio.current_time() + (timeout_s if timeout_s is not None else math.inf)
    with anyio.move_on_after(math.inf if timeout_s is None else timeout_s + _LAST_LOOK_S):
        while True:  # asked at least once, even with a timeout of 0
            try:
                instances = {i.name: i for i in await incus.list_instances()}
            except CoiError:
                instances = None  # incusd away for a moment: asked again
            if instances is not None:
                pending -= await _reached(incus, config, instances, pending, state)
            if not pending or anyio.current_time() >= deadline:
                break
            await anyio.sleep(min(poll_s, max(deadline - anyio.current_time(), 0.0)))
    return sorted(pending)
