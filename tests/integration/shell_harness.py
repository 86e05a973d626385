"""Drive `coi shell` / `coi attach` through a real terminal (pexpect) in a test's own world.

Each `ShellWorld` has its own HOME (so ~/.coi, ~/.claude and ~/.config/coi are test-local), its
own workspace directory (so its containers have their own name hash), the test's Incus project,
and COI_CONTAINER_PREFIX=h3b- (or its own `prefix`) so parallel runs never touch each other's
containers.

A test gets one from the `world` fixture (tests/integration/conftest.py); a module overrides its
`shell_config` fixture for a config of its own.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pexpect

from coi_async.errors import CoiError, NotFoundError
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.naming import workspace_hash
from tests.coi_cli import COI, Run, coi, coi_env
from tests.helpers import DEBIAN_IMAGE

PREFIX = "h3b-"
DETACH = "\x02d"  # Ctrl-b d


@dataclass
class ShellWorld:
    root: Path
    project: str
    incus: IncusClient
    prefix: str = PREFIX

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def workspace(self) -> Path:
        return self.root / "ws"

    @property
    def hash(self) -> str:
        return workspace_hash(str(self.workspace))

    def container(self, slot: int) -> str:
        return f"{self.prefix}{self.hash}-{slot}"

    @property
    def sessions(self) -> Path:
        return self.home / ".coi" / "sessions-claude"

    def env(self, **extra: str) -> dict[str, str]:
        return coi_env(
            home=self.home,
            project=self.project,
            prefix=self.prefix,
            drop=("COI_CONFIG",),
            TERM="xterm",
            **extra,
        )

    def setup(self, *, config: str = "") -> None:
        self.workspace.mkdir(parents=True)
        claude = self.home / ".claude"
        claude.mkdir(parents=True)
        (claude / ".credentials.json").write_text('{"claudeAiOauth": {"accessToken": "test-token"}}')
        (claude / "settings.json").write_text(
            json.dumps({"env": {"MY_VAR": "kept"}, "permissions": {"allow": ["Bash(ls:*)"]}})
        )
        (self.home / ".claude.json").write_text(json.dumps({"userID": "u-1", "projects": {"/x": {}}}))
        conf = self.home / ".config" / "coi"
        conf.mkdir(parents=True)
        (conf / "config.toml").write_text(f'[defaults]\nimage = "{DEBIAN_IMAGE}"\n{config}')

    def spawn(self, *args: str, timeout: float = 60, **env: str) -> pexpect.spawn:
        child = pexpect.spawn(
            COI,
            list(args),
            cwd=str(self.workspace),
            env=self.env(**env),
            dimensions=(30, 100),
            timeout=timeout,
        )
        child.logfile_read = open(self.root / "terminal.log", "ab")  # noqa: SIM115 - closed with the child
        return child

    def show_terminal(self) -> None:
        log = self.root / "terminal.log"
        if log.exists():
            text = re.sub(rb"\x1b\[[0-9;?>=]*[a-zA-Z]|\x1b[()=>][0-9A-Za-z]?", b"", log.read_bytes())
            lines = [
                line for line in text.decode(errors="replace").replace("\r", "").splitlines() if line.strip()
            ]
            print("\n".join(lines[-60:]))

    async def run(self, *args: str, **env: str) -> Run:
        """`coi ARGS` without a terminal."""
        return await coi(*args, env=self.env(**env), cwd=self.workspace)

    async def ours(self) -> list[Instance]:
        return [
            i for i in await self.incus.list_instances() if i.name.startswith(f"{self.prefix}{self.hash}-")
        ]

    async def instance(self, slot: int = 1) -> Instance | None:
        try:
            return await self.incus.get_instance(self.container(slot))
        except NotFoundError:
            return None

    def saved_sessions(self) -> list[Path]:
        if not self.sessions.is_dir():
            return []
        return sorted(p for p in self.sessions.iterdir() if p.is_dir())

    def conversation(self, session: Path) -> str:
        files = list((session / ".claude" / "projects" / "-workspace").glob("*.jsonl"))
        return "".join(f.read_text() for f in files)

    async def remove_all(self) -> None:
        with anyio.move_on_after(60, shield=True):
            for instance in await self.ours():
                with contextlib.suppress(CoiError):
                    await self.incus.stop_instance(instance.name, force=True)
                with contextlib.suppress(CoiError):
                    await self.incus.delete_instance(instance.name)


def talk(child: pexpect.spawn, text: str) -> None:
    """Say `text` to the fake Claude at its prompt and wait for its echo."""
    child.expect("You: ")
    child.sendline(text)
    child.expect(f"Claude: {text}")


def detach(child: pexpect.spawn) -> int:
    """Detach (Ctrl-b d) from a session whose container stays; coi's exit code."""
    child.send(DETACH)
    child.expect(r"\[detached")
    child.expect("Container kept running")
    return finish(child)


def finish(child: pexpect.spawn, *, timeout: float = 60) -> int:
    """Wait for the process to end; its exit code (128+N for a signal)."""
    child.expect(pexpect.EOF, timeout=timeout)
    child.close()
    if child.logfile_read is not None:
        child.logfile_read.close()
    if child.signalstatus is not None:
        return 128 + int(child.signalstatus)
    return int(child.exitstatus)


@contextlib.contextmanager
def killing(child: pexpect.spawn) -> Iterator[pexpect.spawn]:
    try:
        yield child
    finally:
        if child.isalive():
            child.close(force=True)
        # A test that failed before finish() still closes its terminal log.
        if child.logfile_read is not None and not child.logfile_read.closed:
            child.logfile_read.close()
