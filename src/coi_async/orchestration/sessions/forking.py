"""One fork of `coi fork` made, and undone when it fails (fork.py runs them and says why).

Made in order: its git worktree (--worktree), its container in a slot, then its egress, store
entry and tool:
- the container is a copy of the original's made by incusd in one create-and-start (a `copy`
  source, stateless, without snapshots), under the slot's name, through the launch allocator
  (launch.py `SlotCreator`): the keys of a launched session (a new session id, and
  `user.coi.forked_from`), the original's devices but its own egress device and worktree;
- the egress is registered as on every start path (network/session.py `attach_egress`); the
  proxy settings inside came with the copy, as did the tool's credentials and settings: those the
  host gave the original, or newer ones the tool wrote there since (a refreshed token), which a
  fresh copy of the host's would undo;
- the tool starts in a detached tmux session as with `coi shell --background` (tmux.py), going
  on with a copy of the original's conversation (Claude Code: `--resume ID --fork-session`); the
  session starts beside the egress, its tool held back until the rest is done.

Worktrees are made on the host with the host's `git`, as the user running coi (the worktree is
theirs, like the workspace): `~/.coi/worktrees/<repository>-<hash8>/<id8>`, on the new branch
`coi/fork-<id8>` from the workspace's HEAD, where `<id8>` is the first 8 hex digits of the
fork's session id and `<hash8>` that of the repository's top directory; a workspace below the top
of its repository is the same directory of the worktree. `git worktree list` lists them; they
outlive their forks (the work is in them): `git worktree remove PATH` then `git branch -D
coi/fork-<id8>` end one. A workspace with uncommitted changes (whatever `git status --porcelain`
lists, untracked files included) is refused: the forks would not have them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from coi_async.config import Config
from coi_async.errors import (
    CoiError,
    ConflictError,
    IncusApiError,
    InstanceBusyError,
    SessionError,
    SourceFrozenError,
    UsageError,
)
from coi_async.hostfs import make_private_dir
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance, InstanceSource, InstancesPost
from coi_async.naming import KEY_FORKED_FROM, KEY_LAUNCH, tmux_session, workspace_hash
from coi_async.orchestration.containers import ops
from coi_async.orchestration.events import Emit
from coi_async.orchestration.flock import wait_for_flock
from coi_async.orchestration.network.plan import EgressPlan
from coi_async.orchestration.network.session import (
    SessionOrigin,
    attach_egress,
    configure_container,
    detach_egress,
)
from coi_async.orchestration.sessions.cleanup import REMOVE_S
from coi_async.orchestration.sessions.instance_spec import WORKSPACE_PATH, LaunchSpec, instance_config
from coi_async.orchestration.sessions.launch import launch, owner_after_failure
from coi_async.orchestration.sessions.model import Session, started_metadata
from coi_async.orchestration.sessions.store import SessionStore
from coi_async.orchestration.sessions.tmux import TmuxSession, new_gate, user_env
from coi_async.tools import Tool

# The steps of a fork (stable `StepStarted.step` ids).
WORKTREE = "worktree"
COPYING = "copying"
STARTING = "starting"  # detail: the fork's container
WORKTREES_DIR = "worktrees"  # under ~/.coi
BRANCH_PREFIX = "coi/fork-"
_REMOVE_S = 30.0


class NotARepositoryError(UsageError):
    """--worktree on a workspace that is not in a git repository (or one without a commit)."""


class DirtyWorkspaceError(SessionError):
    """--worktree on a workspace whose repository has changes no commit holds."""


class WorktreeError(SessionError):
    """git could not make a fork's worktree."""


class Repository(msgspec.Struct, frozen=True, kw_only=True):
    """The git repository a workspace is in."""

    workspace: str
    top: str  # the top directory of its (main or linked) worktree
    prefix: str  # the workspace's path below `top`: "" or "sub/dir/"


class Worktree(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # the worktree's top directory
    branch: str
    workspace: str  # the directory a fork mounts at /workspace: `path` plus the prefix


class Fork(msgspec.Struct, frozen=True, kw_only=True):
    container: str
    session_id: str
    slot: int
    forked_from: str
    workspace: str  # the host directory at its /workspace
    tmux: str
    # The tool's conversation it goes on from: its id, "" for the most recent one; None when
    # there was none to fork and the tool started a new one.
    conversation: str | None
    worktree: str = ""
    branch: str = ""


@dataclass(frozen=True, kw_only=True)
class ForkPlan:
    """What every fork of one `coi fork` shares."""

    source: Session
    instance: Instance
    tool: Tool
    store: SessionStore
    config: Config  # in the original's network mode
    egress: EgressPlan
    spec: LaunchSpec  # the slots' spec; each fork's adds its slot and session id
    conversation: str | None  # see Fork.conversation
    binary: str  # the tool's executable ("": its own)
    repository: Repository | None  # --worktree
    worktrees: Path | None  # where their worktrees go
    origin: SessionOrigin
    term: str | None = None
    size: tuple[int, int] = (80, 24)  # of the tmux sessions


@dataclass
class _Made:
    """What one fork has made so far, to be undone when it fails."""

    worktree: Worktree | None = None
    container: str = ""
    stored: bool = False


def _env() -> dict[str, str]:
    # The user's GIT_DIR, GIT_WORK_TREE or GIT_INDEX_FILE must not send git elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


async def _git(cwd: str, *args: str) -> tuple[int, str, str]:
    try:
        done = await anyio.run_process(["git", "-C", cwd, *args], check=False, env=_env())
    except OSError as exc:
        raise WorktreeError(f"cannot run git on this host: {exc.strerror or exc}") from exc
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


async def check_repository(workspace: str) -> Repository:
    """The repository of `workspace`, which must have a commit and no uncommitted changes.

    NotARepositoryError, DirtyWorkspaceError otherwise."""
    code, out, _ = await _git(workspace, "rev-parse", "--show-toplevel", "--show-prefix")
    lines = out.split("\n")
    if code != 0 or not lines[0]:
        raise NotARepositoryError(
            f"--worktree needs a git repository, and workspace {workspace} is not in one",
            hint="leave out --worktree, or run 'git init' and commit first",
        )
    top, prefix = lines[0], lines[1] if len(lines) > 1 else ""
    code, _, _ = await _git(top, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if code != 0:
        raise NotARepositoryError(
            f"--worktree needs a commit to branch from, and the git repository {top} has none",
            hint="commit first",
        )
    code, out, err = await _git(top, "status", "--porcelain")
    if code != 0:
        raise WorktreeError(f"git status failed in {top}: {_last_line(err)}")
    if out.strip():
        raise DirtyWorkspaceError(
            f"--worktree: the git repository {top} has uncommitted changes, which the forks would not have",
            hint="commit or stash them first (see 'git status')",
        )
    return Repository(workspace=workspace, top=top, prefix=prefix)


def worktrees_root(coi_dir: str, repository: Repository) -> Path:
    """Where the forks' worktrees of `repository` go (under ~/.coi)."""
    name = os.path.basename(repository.top.rstrip("/")) or "repository"
    return Path(coi_dir) / WORKTREES_DIR / f"{name}-{workspace_hash(repository.top)}"


async def add_worktree(repository: Repository, root: Path, fork_id: str) -> Worktree:
    """A new worktree under `root` on the new branch `coi/fork-<id8>` from HEAD."""
    short = fork_id.replace("-", "")[:8]
    branch = f"{BRANCH_PREFIX}{short}"
    path = root / short
    await anyio.to_thread.run_sync(make_private_dir, root)
    async with _one_git_at_a_time(root):
        code, _, err = await _git(
            repository.top, "worktree", "add", "--quiet", "-b", branch, str(path), "HEAD"
        )
    if code != 0:
        raise WorktreeError(f"git worktree add {path} failed: {_last_line(err)}")
    workspace = os.path.join(path, repository.prefix).rstrip("/") if repository.prefix else str(path)
    return Worktree(path=str(path), branch=branch, workspace=workspace)


async def remove_worktree(repository: Repository, worktree: Worktree) -> None:
    """Undo `add_worktree` (for a fork that failed): the worktree and its branch go. Shielded,
    bounded, and quiet: what cannot be removed stays, for git to tell about."""
    root = Path(worktree.path).parent
    with anyio.move_on_after(_REMOVE_S, shield=True), contextlib.suppress(CoiError):
        async with _one_git_at_a_time(root):
            await _git(repository.top, "worktree", "remove", "--force", worktree.path)
            await _git(repository.top, "branch", "-D", worktree.branch)


@contextlib.asynccontextmanager
async def _one_git_at_a_time(root: Path) -> AsyncIterator[None]:
    """Hold the lock of a repository's worktrees (`root`, coi's own directory for them, is the
    lock: nothing is left there), across processes: two `git worktree add` at once in one
    repository can fail ("failed to read .git/worktrees/<id>/commondir"), and forks make
    theirs at once."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        await wait_for_flock(fd)
        yield
    finally:
        os.close(fd)


async def make_fork(
    incus: IncusClient,
    plan: ForkPlan,
    session_id: str,
    *,
    start: int,
    step: Callable[[str, str], None],
    emit: Emit,
) -> Fork:
    """Make the fork `session_id` in the first free slot from `start` on; `step(id, detail)`
    tells where it is. Raises CoiError when it failed, and then nothing of it is left."""
    made = _Made()
    try:
        workspace = plan.source.workspace
        if plan.repository is not None and plan.worktrees is not None:
            step(WORKTREE, "")
            made.worktree = await add_worktree(plan.repository, plan.worktrees, session_id)
            workspace = made.worktree.workspace
        step(COPYING, "")
        spec = msgspec.structs.replace(plan.spec, slot=start, session_id=session_id)

        async def copy(name: str, slot: int) -> str:
            await _copy(incus, plan, spec, workspace, made.worktree, name, slot)
            return "copy"

        launched = await launch(incus, spec, emit=emit, create=copy)
        # No checkpoint since the copy was made: the undo always knows the container.
        made.container = launched.name
        step(STARTING, launched.name)
        session = Session(
            container=launched.name,
            slot=launched.slot,
            workspace=workspace,
            tool=plan.tool.name,
            session_id=session_id,
            persistent=plan.source.persistent,
            uid=plan.source.uid,
            user=plan.source.user,
            home=plan.source.home,
            running=True,
        )
        await _start(incus, plan, session, made, emit)
    except BaseException:
        await _undo(incus, plan, session_id, made)
        raise
    return Fork(
        container=session.container,
        session_id=session_id,
        slot=session.slot,
        forked_from=plan.source.container,
        workspace=workspace,
        tmux=tmux_session(session.container),
        conversation=plan.conversation,
        worktree=made.worktree.path if made.worktree else "",
        branch=made.worktree.branch if made.worktree else "",
    )


# Where a copy freezes the original (storage without copy-on-write), concurrent forks take turns:
# a copy that finds it frozen by another waits for that one, about as long as a full copy takes.
_FROZEN_RETRY_DELAYS_S = (0.5, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 5.0, 5.0, 10.0, 10.0, 15.0)


async def _copy(
    incus: IncusClient,
    plan: ForkPlan,
    spec: LaunchSpec,
    workspace: str,
    worktree: Worktree | None,
    name: str,
    slot: int,
) -> None:
    """Create and start `name` as a copy of the original (launch.py's `SlotCreator`): the keys of
    a launched session, its own egress device, its worktree at /workspace. ConflictError when a
    rival holds the name; nothing of ours is left behind on failure."""
    token = secrets.token_hex(8)
    stamp = msgspec.structs.replace(spec, workspace=workspace, persistent=plan.source.persistent)
    config = {**instance_config(stamp, slot), KEY_LAUNCH: token, KEY_FORKED_FROM: plan.source.container}
    devices = plan.egress.devices(name)
    if worktree is not None:
        disk = dict(plan.instance.devices.get("workspace") or {"type": "disk", "path": WORKSPACE_PATH})
        devices["workspace"] = {**disk, "source": workspace}
    request = InstancesPost(
        name=name,
        source=InstanceSource(type="copy", source=plan.source.container, instance_only=True),
        start=True,
        config=config,
        devices=devices,
    )
    # On a cluster, beside the original: a copy there is a local copy-on-write one, and its
    # member serves the original's egress.
    location = plan.instance.location
    target = location if location not in ("", "none") else None
    try:
        for delay in (*_FROZEN_RETRY_DELAYS_S, None):
            try:
                await incus.create_instance(request, target=target)
                return
            except SourceFrozenError:
                if delay is None:
                    raise  # cleaned up below, as every failed copy is
                await ops.remove_if_ours(incus, name, token)
            await anyio.sleep(delay)
    except ConflictError:
        raise
    except IncusApiError as exc:
        owner = await owner_after_failure(incus, name, token, exc)
        await ops.remove_if_ours(incus, name, token)
        if owner is None and isinstance(exc, InstanceBusyError):
            raise ConflictError(409, exc.message) from exc  # a rival is taking the name
        raise
    except BaseException:
        await ops.remove_if_ours(incus, name, token)
        raise


async def _start(incus: IncusClient, plan: ForkPlan, session: Session, made: _Made, emit: Emit) -> None:
    """The fork's egress and store entry, then its tool in tmux."""
    name = session.container
    metadata = started_metadata(session, tool=plan.tool.name, image=plan.spec.image, network=plan.egress.mode)

    async def save_metadata() -> None:
        made.stored = True
        await anyio.to_thread.run_sync(plan.store.save_metadata, metadata)

    async def egress() -> None:
        await attach_egress(incus, plan.config, plan.egress, name, plan.origin, created=True, emit=emit)

    env = user_env(home=session.home, user=session.user, term=plan.term, extra=plan.config.environment)
    tmux = TmuxSession(incus, name, tmux_session(name), uid=session.uid, env=env)
    gate = new_gate(session.home)
    # The proxy settings inside (/etc/environment, apt, npm, git) came with the copy; what is left
    # is bringing up its loopback for a proxy device (a daemon listening inside does that itself).
    async with anyio.create_task_group() as tg:
        tg.start_soon(egress)
        if plan.egress.through_daemon and not plan.egress.inside:
            tg.start_soon(configure_container, incus, name)
        tg.start_soon(save_metadata)
        tg.start_soon(
            functools.partial(tmux.start, tool_argv(plan, session.session_id), size=plan.size, gate=gate)
        )
    await tmux.open_gate(gate)


def tool_argv(plan: ForkPlan, session_id: str) -> list[str]:
    """The fork's tool: going on with a copy of the original's conversation, else a new one."""
    if plan.conversation is None:
        return plan.tool.new_session_command(session_id, binary=plan.binary)
    return plan.tool.fork_command(plan.conversation or None, binary=plan.binary)


async def _undo(incus: IncusClient, plan: ForkPlan, session_id: str, made: _Made) -> None:
    """Remove what a failed (or interrupted) fork made; shielded and bounded."""
    with anyio.CancelScope(shield=True):
        removed = True
        if made.container:
            try:
                await ops.remove(incus, made.container, bound_s=REMOVE_S)
            except CoiError:
                removed = False
            await detach_egress(plan.egress, made.container)
        if made.stored:
            with contextlib.suppress(CoiError, OSError):
                await anyio.to_thread.run_sync(plan.store.delete, session_id)
        # A container that could not be removed keeps its workspace.
        if made.worktree is not None and plan.repository is not None and removed:
            await remove_worktree(plan.repository, made.worktree)
