"""`coi fork`'s tool side: the fork command line, and the fake CLI's `--fork-session`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from coi_async.recipes import DUMMY
from coi_async.tools import CLAUDE

BASE = ["claude", "--verbose", "--permission-mode", "bypassPermissions"]


def test_fork_command_lines() -> None:
    assert CLAUDE.can_fork
    assert CLAUDE.fork_command("cli-9") == [*BASE, "--resume", "cli-9", "--fork-session"]
    assert CLAUDE.fork_command(None) == [*BASE, "--continue", "--fork-session"]
    assert CLAUDE.fork_command("x", binary="dummy")[0] == "dummy"


def fake(home: Path, cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The fake CLI as `claude` (as `dummy` it answers like the original's stub)."""
    program = home.parent / "claude"
    if not program.exists():
        program.symlink_to(DUMMY)
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, str(program), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=20,
        check=False,
    )


def texts(path: Path) -> list[tuple[str, str]]:
    return [(e["text"], e["sessionId"]) for e in map(json.loads, path.read_text().splitlines())]


def test_the_fake_cli_forks_a_conversation(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    projects = home / ".claude" / "projects" / str(cwd).replace("/", "-")
    assert fake(home, cwd, "--session-id", "orig", stdin="first\n").returncode == 0

    done = fake(home, cwd, "--resume", "orig", "--fork-session", stdin="in the fork\n")
    assert done.returncode == 0, done.stderr
    new = next(line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("Session: "))
    assert new != "orig"
    assert f"Forked session orig into {new} (2 earlier messages)" in done.stdout
    assert "You: first\nClaude: first\n" in done.stdout
    # The original is as it was; the fork has its history under its own id, and goes on there.
    assert texts(projects / "orig.jsonl") == [("first", "orig")] * 2
    assert [t for t, _ in texts(projects / f"{new}.jsonl")] == [
        "first",
        "first",
        "in the fork",
        "in the fork",
    ]
    assert {s for _, s in texts(projects / f"{new}.jsonl")} == {new}

    # --continue --fork-session forks the most recent one; a second fork gets an id of its own.
    again = fake(home, cwd, "--continue", "--fork-session")
    assert again.returncode == 0, again.stderr
    assert f"Forked session {new} into " in again.stdout
    assert len(list(projects.glob("*.jsonl"))) == 3


def test_fork_session_needs_a_conversation_to_resume(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    alone = fake(home, tmp_path, "--fork-session")
    assert alone.returncode == 2
    assert "--fork-session needs --resume or --continue" in alone.stderr
    missing = fake(home, tmp_path, "--resume", "nope", "--fork-session")
    assert missing.returncode == 1
    assert "No conversation found with session ID: nope" in missing.stderr
