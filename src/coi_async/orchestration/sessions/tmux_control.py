"""`coi tmux ...`: reach the tmux session a container's AI tool runs in.

tmux keeps one server per user (socket `/tmp/tmux-<uid>/default`), and `coi shell` starts the
session as the session's user, not root. So every tmux command here runs as that user, with its
HOME: the uid recorded on the instance (`user.coi.uid`), else the `code` user (1000). The
reference ran these as root and never saw a session (upstream #588).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from coi_async.errors import CoiError
from coi_async.incus import ExecResult, IncusClient
from coi_async.incus.models import Instance
from coi_async.naming import KEY_UID, tmux_session
from coi_async.orchestration.containers.commands import container_errors

CODE_UID = 1000
CODE_HOME = "/home/code"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class SessionUser:
    uid: int
    home: str

    @property
    def env(self) -> dict[str, str]:
        # incusd sets HOME and PATH for root only.
        return {"HOME": self.home, "PATH": _PATH, "LANG": "C.UTF-8", "TERM": "xterm-256color"}


@dataclass(slots=True)
class Listing:
    sessions: list[str] = field(default_factory=list)  # containers that have a coi tmux session
    failed: list[tuple[str, str]] = field(default_factory=list)  # (container, reason)


def session_user(instance: Instance) -> SessionUser:
    try:
        uid = int(instance.config.get(KEY_UID, str(CODE_UID)))
    except ValueError:
        uid = CODE_UID
    return SessionUser(uid, "/root" if uid == 0 else CODE_HOME)


async def _running(incus: IncusClient, container: str) -> Instance:
    with container_errors(container):
        instance = await incus.get_instance(container)
    if not instance.running:
        raise CoiError(f"container {container} is not running")
    return instance


async def _tmux(incus: IncusClient, container: str, user: SessionUser, args: Sequence[str]) -> ExecResult:
    with container_errors(container):
        result = await incus.exec(
            container, ["tmux", *args], env=user.env, user=user.uid, group=user.uid, cwd=user.home
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


async def send(incus: IncusClient, container: str, command: str) -> str:
    """Type `command` and Enter into the container's tmux session; return the session name."""
    user = session_user(await _running(incus, container))
    session = tmux_session(container)
    # `--` so that a command starting with "-" is typed, not read as an option of send-keys.
    result = await _tmux(incus, container, user, ["send-keys", "-t", session, "--", command, "Enter"])
    if not result.ok:
        raise _no_session(container, result)
    return session


async def capture(incus: IncusClient, container: str) -> bytes:
    """The visible contents of the session's pane."""
    user = session_user(await _running(incus, container))
    result = await _tmux(incus, container, user, ["capture-pane", "-t", tmux_session(container), "-p"])
    if not result.ok:
        raise _no_session(container, result)
    return result.stdout


async def has_session(incus: IncusClient, instance: Instance) -> bool:
    user = session_user(instance)
    result = await _tmux(incus, instance.name, user, ["has-session", "-t", tmux_session(instance.name)])
    return result.ok


async def list_sessions(
    incus: IncusClient, prefix: str, *, parallel: int = 8, per_item_s: float = 15
) -> Listing:
    """Running containers named `<prefix>...` that have their coi tmux session, checked at once."""
    candidates = [i for i in await incus.list_instances() if i.name.startswith(prefix) and i.running]
    listing = Listing()
    limiter = anyio.CapacityLimiter(parallel)

    async def check(instance: Instance) -> None:
        async with limiter:
            try:
                with anyio.fail_after(per_item_s):
                    if await has_session(incus, instance):
                        listing.sessions.append(instance.name)
            except TimeoutError:
                listing.failed.append((instance.name, f"no answer after {per_item_s:g}s"))
            except CoiError as exc:
                listing.failed.append((instance.name, str(exc)))

    async with anyio.create_task_group() as tg:
        for instance in candidates:
            tg.start_soon(check, instance)
    listing.sessions.sort()
    listing.failed.sort()
    return listing
