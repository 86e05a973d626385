"""`coi tmux ...` and `coi attach`: reach the tmux session a container's AI tool runs in.

tmux keeps one server per user (socket `/tmp/tmux-<uid>/default`), and `coi shell` starts the
session as the session's user, not root. So the session is looked for as that user, with its
HOME: the session's user (`sessions.model.session_of`), and for a container coi did not name,
the configured code user; then as root, whose server holds a session started by hand (`coi
container exec NAME -- tmux new-session -d -s coi-NAME ...` runs as root). The reference asked
root only and never saw a session `coi shell` made (upstream #588).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coi_async.config import Config
from coi_async.errors import CoiError
from coi_async.incus import ExecResult, IncusClient
from coi_async.incus.models import Instance
from coi_async.naming import tmux_session
from coi_async.orchestration.containers.commands import container_errors
from coi_async.orchestration.runner import BulkReport, ItemContext, run_bulk
from coi_async.orchestration.sessions.model import new_session, session_of

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class SessionUser:
    uid: int
    user: str
    home: str

    @property
    def env(self) -> dict[str, str]:
        # incusd sets HOME and PATH for root only.
        return {"HOME": self.home, "PATH": _PATH, "LANG": "C.UTF-8", "TERM": "xterm-256color"}


@dataclass(frozen=True, slots=True)
class Listing:
    """The check of every candidate container: `run` has one result per container (its detail
    says whether the container has the session)."""

    run: BulkReport
    per_item_s: float

    @property
    def sessions(self) -> list[str]:
        """Containers that have their coi tmux session, sorted."""
        return sorted(r.item for r in self.run.succeeded if r.detail == _HAS_SESSION)

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(container, reason) of the containers that could not be checked, sorted."""
        return sorted(
            (r.item, f"no answer after {self.per_item_s:g}s" if r.outcome == "timed-out" else r.error or "")
            for r in self.run.failed
        )


_HAS_SESSION = "has-session"


_ROOT = SessionUser(0, "root", "/root")


def session_users(instance: Instance, config: Config) -> list[SessionUser]:
    """Whose tmux server may hold the container's session, in the order to ask: the session's
    user (else the code user), then root."""
    session = session_of(instance, config) or new_session(
        config, workspace="", session_id="", persistent=False, container=instance.name
    )
    first = SessionUser(session.uid, session.user, session.home)
    return [first] if first.uid == 0 else [first, _ROOT]


async def find_session_user(incus: IncusClient, config: Config, instance: Instance) -> SessionUser | None:
    """The user whose tmux server has the container's coi session; None when nobody's has."""
    for user in session_users(instance, config):
        result = await _tmux(
            incus, instance.name, user, ["has-session", "-t", f"={tmux_session(instance.name)}"]
        )
        if result.ok:
            return user
    return None


async def _as_owner(incus: IncusClient, config: Config, container: str, args: Sequence[str]) -> ExecResult:
    """Run `tmux ARGS` as each user whose server may hold the session, until one succeeds (no
    separate has-session first: the common case costs one exec)."""
    result: ExecResult | None = None
    for user in session_users(await _running(incus, container), config):
        result = await _tmux(incus, container, user, args)
        if result.ok:
            return result
    assert result is not None  # session_users names at least one user
    raise _no_session(container, result)


async def _running(incus: IncusClient, container: str) -> Instance:
    with container_errors(container):
        instance = await incus.get_instance(container)
    if not instance.running:
        raise CoiError(f"container {container} is not running")
    return instance


async def _tmux(incus: IncusClient, container: str, user: SessionUser, args: Sequence[str]) -> ExecResult:
    with container_errors(container):
        result = await incus.exec(
            # Not the home as cwd: a container coi did not make may have no home for the code user.
            container,
            ["tmux", *args],
            env=user.env,
            user=user.uid,
            group=user.uid,
            cwd="/",
        )
    if result.exit_code == 127:
        raise CoiError(f"tmux is not installed in container {container}")
    return result


def _no_session(container: str, result: ExecResult) -> CoiError:
    detail = result.stderr.decode(errors="replace").strip()
    return CoiError(
        f"no tmux session {tmux_session(container)} in container {container}"
        + (f": {detail}" if detail else ""),
        hint="start one with `coi shell --background`, or see `coi tmux list`",
    )


async def send(incus: IncusClient, config: Config, container: str, command: str) -> str:
    """Type `command` and Enter into the container's tmux session; return the session name."""
    session = tmux_session(container)
    # `--` so that a command starting with "-" is typed, not read as an option of send-keys.
    await _as_owner(incus, config, container, ["send-keys", "-t", session, "--", command, "Enter"])
    return session


async def capture(incus: IncusClient, config: Config, container: str) -> bytes:
    """The visible contents of the session's pane."""
    result = await _as_owner(incus, config, container, ["capture-pane", "-t", tmux_session(container), "-p"])
    return result.stdout


async def list_sessions(
    incus: IncusClient, config: Config, prefix: str, *, parallel: int = 8, per_item_s: float = 15
) -> Listing:
    """Running containers named `<prefix>...` that have their coi tmux session, checked at once."""
    candidates = {i.name: i for i in await incus.list_instances() if i.name.startswith(prefix) and i.running}

    async def check(ctx: ItemContext) -> None:
        if await find_session_user(incus, config, candidates[ctx.name]) is not None:
            ctx.detail = _HAS_SESSION

    run = await run_bulk(list(candidates), check, limit=parallel, per_item_s=per_item_s)
    return Listing(run=run, per_item_s=per_item_s)
