"""The tmux session a coi shell runs its tool in, always as the session's user.

That user's uid and HOME come from the session (`model.session_of`: the `user.coi.*` keys, or the
config's incus.code_user/code_uid), never a constant. tmux's server socket lives in
/tmp/tmux-<uid>/, so every command here runs as that uid with its HOME: a tmux command run as
root would talk to another server and see no sessions (upstream #588).
"""

from __future__ import annotations

import posixpath
import secrets
import shlex
from collections.abc import Mapping, Sequence

from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.orchestration.sessions.instance_spec import tmux_dir

WORKDIR = "/workspace"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_START_ATTEMPTS = 3
GATE_WAIT_S = 60.0
GATE_MISSED = "coi did not finish setting this session up: the tool was not started"
# Terminals whose terminfo entries images rarely ship; they all speak xterm-256color.
_FOREIGN_TERMS = ("xterm-ghostty", "wezterm", "alacritty", "kitty", "tmux-256color", "screen-256color")


def sanitize_term(term: str | None) -> str:
    """A TERM the image knows: the reference's map (internal/terminal/sanitize.go)."""
    if not term:
        return "xterm-256color"
    if term.startswith(_FOREIGN_TERMS):
        return "xterm-256color"
    return term


def user_env(
    *, home: str, user: str, term: str | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of every process coi starts for the session's user.

    incusd sets PATH, HOME and USER only for root, so they are passed here; `extra` (the -e pairs)
    comes last and wins, except TERM, which is sanitised wherever it comes from.
    """
    env = {
        "HOME": home,
        "USER": user,
        "LOGNAME": user,
        "PATH": _PATH,
        "LANG": "C.UTF-8",
        "IS_SANDBOX": "1",
    }
    env.update(extra or {})
    env["TERM"] = sanitize_term((extra or {}).get("TERM") or term)
    return env


def new_gate(home: str) -> str:
    """A gate for `TmuxSession.start` that no other start used, beside the tmux socket (where
    boot does not clear it)."""
    return f"{tmux_dir(home)}/ready-{secrets.token_hex(8)}"


def wrapped_command(argv: Sequence[str], *, gate: str = "", wait_s: float = GATE_WAIT_S) -> str:
    """The pane's shell command: run the tool, then stay in bash when it exits.

    `trap : INT` keeps Ctrl-C aimed at the tool from also ending the wrapper, so the user lands
    in bash rather than losing the pane. With a `gate` (a path), the tool waits until coi has
    made that file, for at most `wait_s`: a session whose tmux starts while coi is still
    setting it up (its proxy settings, credentials) never runs the tool before that is done,
    nor at all when coi gave up.
    """
    wait = ""
    if gate:
        path = shlex.quote(gate)
        wait = (
            f"n=0; while [ ! -e {path} ]; do n=$((n + 1)); if [ $n -gt {int(wait_s * 20)} ]; then "
            f"echo {shlex.quote(GATE_MISSED)}; exec bash; fi; sleep 0.05; done; rm -f {path}; "
        )
    return f"trap : INT; {wait}{shlex.join(argv)}; exec bash"


class TmuxSession:
    """One named tmux session in one container, driven as `uid`."""

    def __init__(
        self, incus: IncusClient, container: str, session: str, *, uid: int, env: Mapping[str, str]
    ) -> None:
        self.incus = incus
        self.container = container
        self.session = session
        self.uid = uid
        self.env = dict(env)

    async def _tmux(self, *args: str) -> int:
        result = await self.incus.exec(
            self.container, ["tmux", *args], env=self.env, user=self.uid, group=self.uid, cwd=WORKDIR
        )
        return result.exit_code

    async def exists(self) -> bool:
        """Whether the session is there; CoiError when the answer stays unknown."""
        code = await self._tmux("has-session", "-t", f"={self.session}")
        if code not in (0, 1):
            raise CoiError(f"cannot ask tmux in {self.container} about {self.session}: exit {code}")
        return code == 0

    async def start(self, argv: Sequence[str], *, size: tuple[int, int] = (80, 24), gate: str = "") -> None:
        """Start the session detached, running `argv` (then bash) in /workspace; with a `gate`,
        only once that file exists (`wrapped_command`)."""
        columns, rows = size
        env_args = [arg for key, value in self.env.items() for arg in ("-e", f"{key}={value}")]
        command = [
            # tmux makes its socket's directory, not the one that holds it (TMUX_TMPDIR), nor
            # does the gate's maker (the files API).
            "sh",
            "-c",
            'for d in "$TMUX_TMPDIR" "$1"; do if [ -n "$d" ]; then mkdir -p "$d"; fi; done; shift; exec "$@"',
            "sh",
            posixpath.dirname(gate),
            "tmux",
            "new-session",
            "-d",
            "-s",
            self.session,
            "-c",
            WORKDIR,
            "-x",
            str(columns),
            "-y",
            str(rows),
            *env_args,
            "--",
            "bash",
            "-c",
            wrapped_command(argv, gate=gate),
        ]
        failure = ""
        for _ in range(_START_ATTEMPTS):
            result = await self.incus.exec(
                self.container, command, env=self.env, user=self.uid, group=self.uid, cwd=WORKDIR
            )
            if result.ok:
                return
            failure = result.stderr.decode(errors="replace").strip() or f"tmux exited {result.exit_code}"
            # incusd can lose track of an exec (-1) on a loaded host although tmux did its work.
            if await self.exists():
                return
        raise CoiError(f"cannot start tmux session {self.session} in {self.container}: {failure}")

    async def open_gate(self, gate: str) -> None:
        """Let the tool of a session started with `gate` go."""
        await self.incus.push_file(self.container, gate, b"", uid=self.uid, gid=self.uid, mode=0o600)

    async def send_command(self, argv: Sequence[str]) -> None:
        """Type `argv` into the session's pane, as if the user had (reference behaviour for reuse)."""
        await self._tmux("send-keys", "-t", self.session, "--", shlex.join(argv), "Enter")

    def attach_argv(self) -> list[str]:
        return ["tmux", "attach-session", "-t", f"={self.session}"]
