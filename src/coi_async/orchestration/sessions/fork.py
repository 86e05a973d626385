"""`coi fork CONTAINER [-n N] [--worktree]`: N new sessions, each a copy of a running one.

A fork is an ordinary session of the original's workspace, in a free slot of it: a copy-on-write
copy of the original's container as it is now (installed packages, files, the home with the
tool's state; the processes start afresh), stamped as a launched session with a new session id
and `user.coi.forked_from`, in the original's network mode, its tool going on with a copy of the
original's conversation in a detached tmux session; with --worktree, on a git worktree of the
workspace of its own. How one fork is made (and undone) is forking.py's.

This module checks the request before anything is made (a running coi session, -n within the
workspace's free slots, --worktree in a git repository without uncommitted changes; one error
for bad input), finds what the forks share (the conversation to fork, the egress plan), then
makes the forks concurrently through the one bounded runner (runner.py), each starting from a
different free slot so that they do not all contend for the lowest. A fork that fails (or is
interrupted) leaves nothing behind, and the others go on.
"""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from coi_async.config import Config, apply_flags
from coi_async.errors import CoiError, NotFoundError, SessionError, UsageError, coi_errors
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.naming import KEY_IMAGE
from coi_async.orchestration.containers import ops
from coi_async.orchestration.events import Emit, ItemResult, ignore
from coi_async.orchestration.network.plan import KEY_NETWORK, EgressPlan
from coi_async.orchestration.network.session import SessionOrigin, plan_egress
from coi_async.orchestration.runner import BulkReport, ItemContext, run_bulk
from coi_async.orchestration.sessions.forking import (
    Fork,
    ForkPlan,
    Repository,
    check_repository,
    make_fork,
    worktrees_root,
)
from coi_async.orchestration.sessions.instance_spec import LaunchSpec
from coi_async.orchestration.sessions.launch import occupants
from coi_async.orchestration.sessions.model import Session, session_of
from coi_async.orchestration.sessions.start import DUMMY_BINARY
from coi_async.orchestration.sessions.store import SessionStore, check_session_id, new_session_id
from coi_async.tools import Tool, get_tool

# One fork's bound: on storage without copy-on-write, a copy is a full copy of the filesystem.
FORK_S = 600.0


class NotForkableError(UsageError):
    """The container named is not a coi session (or not there at all)."""


class SourceNotRunningError(SessionError):
    """The session to fork is not running."""


class TooManyForksError(UsageError):
    """-n asks for fewer than one fork, or for more than the workspace has free slots."""


class ForkRequest(msgspec.Struct, frozen=True, kw_only=True):
    container: str
    count: int = 1
    worktree: bool = False  # each fork on its own git worktree of the workspace
    use_dummy: bool = False  # COI_USE_DUMMY=1: the tool is the image's `dummy` test stub
    term: str | None = None
    size: tuple[int, int] = (80, 24)  # the tmux sessions' size


class ForkReport(msgspec.Struct, kw_only=True):
    source: str
    forks: list[Fork] = msgspec.field(default_factory=list)  # by slot, once done
    bulk: BulkReport = msgspec.field(default_factory=BulkReport)  # one item per fork: its session id

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.bulk.results if not r.ok]


@dataclass
class _Survey:
    """What the checks before any fork find out."""

    free: list[int] = field(default_factory=list)  # the workspace's free slots
    conversation: str | None = None
    egress: EgressPlan | None = None
    repository: Repository | None = None


async def fork_session(
    incus: IncusClient,
    config: Config,
    request: ForkRequest,
    *,
    emit: Emit = ignore,
    report: ForkReport | None = None,
) -> ForkReport:
    """Make `request.count` forks of the running session `request.container` (module docstring).

    Raises for bad input before anything is made; a fork's own failure is in the report's
    `failed`. Pass `report` to see the forks made when the run is cancelled.
    """
    out = report if report is not None else ForkReport(source=request.container)
    if request.count < 1:
        raise TooManyForksError(f"invalid -n {request.count}: at least one fork")
    plan, free = await _plan(incus, config, request)
    ids = [new_session_id() for _ in range(request.count)]
    # Each fork tries a slot of its own first, so that they do not all contend for the lowest.
    starts = dict(zip(ids, free[: request.count], strict=True))

    async def one(ctx: ItemContext) -> None:
        fork = await make_fork(incus, plan, ctx.name, start=starts[ctx.name], step=ctx.step, emit=emit)
        out.forks.append(fork)
        out.forks.sort(key=lambda f: f.slot)
        ctx.detail = fork.container

    await run_bulk(
        ids,
        one,
        limit=max(1, min(config.defaults.parallel, request.count)),
        per_item_s=FORK_S,
        emit=emit,
        report=out.bulk,
    )
    return out


async def _source(incus: IncusClient, config: Config, name: str) -> tuple[Session, Instance]:
    instance = await ops.state(incus, name)
    if instance is None:
        raise NotForkableError(f"container {name} not found", hint="see 'coi list'")
    session = session_of(instance, config)
    if session is None or not session.workspace:
        raise NotForkableError(f"container {name} is not a coi session", hint="see 'coi list'")
    if not instance.running:
        raise SourceNotRunningError(
            f"container {name} is not running", hint=f"start its session again first: coi attach {name}"
        )
    return session, instance


async def _plan(incus: IncusClient, config: Config, request: ForkRequest) -> tuple[ForkPlan, list[int]]:
    """What the forks share, and the workspace's free slots; raises for bad input."""
    source, instance = await _source(incus, config, request.container)
    tool = get_tool(source.tool)
    store = SessionStore(config.paths.tool_sessions_dir(tool.name), config_dir=tool.config_dir)
    mode = instance.config.get(KEY_NETWORK, "")
    session_config = config
    with contextlib.suppress(UsageError):  # a mode this coi does not know: the config's
        session_config = apply_flags(config, network=mode) if mode else config
    spec = LaunchSpec(
        workspace=source.workspace,
        image=instance.config.get(KEY_IMAGE, "") or config.defaults.image,
        prefix=config.container_prefix,
        max_slots=config.defaults.max_slots,
        tool=tool.name,
        code_uid=source.uid,
        code_user=source.user,
        next_if_busy=True,
    )
    found = _Survey()

    async def free_slots() -> None:
        taken = occupants(await incus.list_instances(), prefix=spec.prefix, workspace=spec.workspace)
        found.free = [s for s in range(1, spec.max_slots + 1) if s not in taken]

    async def conversation() -> None:
        found.conversation = await _conversation(incus, source, tool, store)

    async def egress() -> None:
        found.egress = await plan_egress(incus, session_config)

    async def repository() -> None:
        if request.worktree:
            found.repository = await check_repository(source.workspace)

    try:
        async with anyio.create_task_group() as tg:
            for step in (free_slots, conversation, egress, repository):
                tg.start_soon(step)
    except Exception as exc:
        errors = coi_errors(exc)
        if errors is None:
            raise
        # One error line: bad input (a usage error) before whatever else failed beside it.
        raise min(errors, key=lambda e: e.exit_code != 2) from None
    free = found.free
    if request.count > len(free):
        raise TooManyForksError(
            f"cannot make {request.count} forks of {source.container}: {len(free)} of the "
            f"{spec.max_slots} slots of workspace {source.workspace} are free",
            hint="stop sessions with 'coi shutdown', ask for fewer, or raise defaults.max_slots",
        )
    egress_plan, repo = found.egress, found.repository
    assert egress_plan is not None
    if egress_plan.needs_member:  # on a cluster: its forks stay on its member (forking.py)
        egress_plan = egress_plan.on_member(instance.location)
    coi_dir = str(Path(config.paths.sessions_dir).parent)
    dummy = request.use_dummy or config.environment.get("COI_USE_DUMMY") == "1"
    plan = ForkPlan(
        source=source,
        instance=instance,
        tool=tool,
        store=store,
        config=session_config,
        egress=egress_plan,
        spec=msgspec.structs.replace(spec, egress=egress_plan),
        conversation=found.conversation,
        binary=DUMMY_BINARY if dummy else config.tool.binary_for(tool.name),
        repository=repo,
        worktrees=worktrees_root(coi_dir, repo) if repo is not None else None,
        origin=SessionOrigin.here(config.profile),
        term=request.term,
        size=request.size,
    )
    return plan, free


async def _conversation(incus: IncusClient, source: Session, tool: Tool, store: SessionStore) -> str | None:
    """The tool's conversation in the original to go on from: the one coi started or resumed
    there when it is still there, else (several, none of them known) "" for the most recent;
    None when there is none, or the tool cannot fork one."""
    if not tool.can_fork or not tool.conversation_suffix:
        return None
    where = posixpath.join(source.home, tool.config_dir, tool.conversations_dir)
    try:
        names = await incus.list_directory(source.container, where)
    except NotFoundError:
        return None  # no conversation yet (or no state directory at all)
    suffix = tool.conversation_suffix
    ids = [n[: -len(suffix)] for n in names if n.endswith(suffix) and len(n) > len(suffix)]
    if not ids:
        return None
    known = ""
    with contextlib.suppress(CoiError):
        meta = await anyio.to_thread.run_sync(store.load_metadata, check_session_id(source.session_id))
        known = meta.cli_session_id if meta else ""
    for candidate in (known, source.session_id):
        if candidate and candidate in ids:
            return candidate
    return ids[0] if len(ids) == 1 else ""
