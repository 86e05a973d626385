"""Unit tests for the fake Claude CLI (images/fake-claude/claude).

Each test runs the script in a subprocess with HOME pointing at a temporary directory.
Run: pytest images/fake-claude/test_fake_claude.py
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("claude")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work" / "space"
    path.mkdir(parents=True)
    return path


def run(
    home: Path, cwd: Path, *args: str, stdin: str = "", program: Path = SCRIPT
) -> subprocess.CompletedProcess[str]:
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


def project_dir(home: Path, cwd: Path) -> Path:
    return home / ".claude" / "projects" / str(cwd).replace("/", "-")


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def session_of(stdout: str) -> str:
    return next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("Session: "))


def test_version(home: Path, workdir: Path) -> None:
    result = run(home, workdir, "--version")
    assert result.returncode == 0
    assert result.stdout == "1.0.0 (Fake Claude Code)\n"
    assert not (home / ".claude").exists()


def test_conversation_is_echoed_and_logged(home: Path, workdir: Path) -> None:
    result = run(home, workdir, stdin="hello\nsecond line\nexit\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Fake Claude Code 1.0.0\n")
    assert f"cwd: {workdir}\n" in out
    assert "Permission mode: default" in out
    assert "Claude: hello\n" in out
    assert "Claude: second line\n" in out
    assert out.count("You: ") == 3
    session_id = session_of(out)
    assert uuid.UUID(session_id).version == 4
    log = entries(project_dir(home, workdir) / f"{session_id}.jsonl")
    assert [(e["type"], e["text"]) for e in log] == [
        ("user", "hello"),
        ("assistant", "hello"),
        ("user", "second line"),
        ("assistant", "second line"),
    ]
    assert all(e["sessionId"] == session_id and e["timestamp"].endswith("Z") for e in log)


def test_project_dir_for_workspace_is_dash_workspace(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # /workspace is where coi mounts the project: the log must land in Claude's "-workspace" directory
    loader = importlib.machinery.SourceFileLoader("fake_claude", str(SCRIPT))
    spec = importlib.util.spec_from_loader("fake_claude", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    monkeypatch.setenv("HOME", str(home))
    assert module.project_dir("/workspace") == home / ".claude" / "projects" / "-workspace"


@pytest.mark.parametrize("ending", ["quit\n", "/exit\n", "", "  exit  \n"])
def test_exit_words_and_eof_exit_zero(home: Path, workdir: Path, ending: str) -> None:
    result = run(home, workdir, "--session-id", "s1", stdin="hi\n" + ending)
    assert result.returncode == 0
    assert "Claude: hi" in result.stdout
    assert len(entries(project_dir(home, workdir) / "s1.jsonl")) == 2


def test_session_id_flags_and_banner(home: Path, workdir: Path) -> None:
    result = run(
        home,
        workdir,
        "--verbose",
        "--permission-mode",
        "bypassPermissions",
        "--session-id",
        "abc-123",
        stdin="",
    )
    assert result.returncode == 0, result.stderr
    assert "Session: abc-123\n" in result.stdout
    assert "Permission mode: bypassPermissions" in result.stdout
    # the file exists from the start, so a session without messages can still be resumed
    assert (project_dir(home, workdir) / "abc-123.jsonl").read_text() == ""


def test_skip_permissions_shows_bypass(home: Path, workdir: Path) -> None:
    result = run(home, workdir, "--dangerously-skip-permissions")
    assert result.returncode == 0
    assert "Permission mode: bypassPermissions" in result.stdout


def test_resume_by_id_replays_and_appends(home: Path, workdir: Path) -> None:
    run(home, workdir, "--session-id", "one", stdin="first\n")
    result = run(home, workdir, "--resume", "one", stdin="again\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Session: one" in lines
    replay = lines.index("You: first")
    assert lines[replay + 1] == "Claude: first"
    assert "Claude: again" in result.stdout.split("You: first", 1)[1]
    texts = [e["text"] for e in entries(project_dir(home, workdir) / "one.jsonl")]
    assert texts == ["first", "first", "again", "again"]


def test_resume_equals_form(home: Path, workdir: Path) -> None:
    run(home, workdir, "--session-id", "two", stdin="x\n")
    assert run(home, workdir, "--resume=two").returncode == 0


@pytest.mark.parametrize(
    "flags", [["--resume"], ["--continue"], ["--verbose", "--resume", "--permission-mode", "plan"]]
)
def test_resume_latest(home: Path, workdir: Path, flags: list[str]) -> None:
    run(home, workdir, "--session-id", "old", stdin="a\n")
    run(home, workdir, "--session-id", "new", stdin="b\n")
    old = project_dir(home, workdir) / "old.jsonl"
    os.utime(old, (1_000_000_000, 1_000_000_000))  # make "new" clearly the most recent
    result = run(home, workdir, *flags, stdin="c\n")
    assert result.returncode == 0, result.stderr
    assert session_of(result.stdout) == "new"
    assert [e["text"] for e in entries(project_dir(home, workdir) / "new.jsonl")] == ["b", "b", "c", "c"]


def test_resume_missing_id_fails(home: Path, workdir: Path) -> None:
    result = run(home, workdir, "--resume", "nope")
    assert result.returncode == 1
    assert "No conversation found with session ID: nope" in result.stderr
    assert result.stdout == ""


def test_resume_latest_without_sessions_fails(home: Path, workdir: Path) -> None:
    result = run(home, workdir, "--continue")
    assert result.returncode == 1
    assert "No conversation found" in result.stderr


def test_sessions_are_per_directory(home: Path, workdir: Path, tmp_path: Path) -> None:
    run(home, workdir, "--session-id", "here", stdin="x\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert run(home, other, "--resume", "here").returncode == 1


def test_reused_session_id_fails(home: Path, workdir: Path) -> None:
    run(home, workdir, "--session-id", "dup")
    result = run(home, workdir, "--session-id", "dup")
    assert result.returncode == 1
    assert "already in use" in result.stderr


@pytest.mark.parametrize(
    "args",
    [["--bogus"], ["--session-id"], ["--resume", "../x"], ["--session-id", "a", "--resume", "a"], ["stray"]],
)
def test_bad_arguments_exit_2(home: Path, workdir: Path, args: list[str]) -> None:
    result = run(home, workdir, *args)
    assert result.returncode == 2
    assert result.stderr.strip()
    assert not (home / ".claude").exists()


def test_blank_lines_are_ignored_and_unicode_survives(home: Path, workdir: Path) -> None:
    result = run(home, workdir, "--session-id", "u", stdin="\n  \nzażółć 🙂\n")
    assert result.returncode == 0
    assert "Claude: zażółć 🙂" in result.stdout
    assert [e["text"] for e in entries(project_dir(home, workdir) / "u.jsonl")] == ["zażółć 🙂"] * 2


def test_as_dummy_it_answers_like_the_original_stub(home: Path, workdir: Path, tmp_path: Path) -> None:
    dummy = tmp_path / "dummy"
    dummy.symlink_to(SCRIPT.resolve())
    done = run(home, workdir, "--session-id", str(uuid.uuid4()), stdin="hello\nexit\n", program=dummy)
    assert done.returncode == 0, done.stderr
    assert "You: hello-BACK\n" in done.stdout
    assert "Claude:" not in done.stdout
    [log] = list(project_dir(home, workdir).glob("*.jsonl"))
    assert [e["text"] for e in entries(log)] == ["hello", "hello-BACK"], "its state is kept for --resume"


def test_hooks_of_the_settings_run_at_their_moments(home: Path, workdir: Path) -> None:
    log = home / "hooks.log"
    record = f"cat >> {log}; echo >> {log}"

    def group(event: str, matcher: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = {
            "hooks": [{"type": "command", "command": f"{record}; echo {event} >> {log}"}]
        }
        return found if matcher is None else {"matcher": matcher, **found}

    hooks = {
        event: [group(event)]
        for event in ("SessionStart", "UserPromptSubmit", "Notification", "Stop", "SessionEnd")
    }
    hooks["PreToolUse"] = [group("PreToolUse", "Bash|Edit"), group("PreToolUse-never", "Read")]
    (home / ".claude").mkdir()
    (home / ".claude" / "settings.json").write_text(json.dumps({"hooks": hooks}))

    out = run(home, workdir, stdin="/prompt think\n/notify May I?\n/tool Bash\n/stop\nhello\nexit\n")
    assert out.returncode == 0, out.stderr
    assert "Claude: working on think" in out.stdout
    assert "Claude: notified May I?" in out.stdout
    lines = log.read_text().splitlines()
    events = [line for line in lines if not line.startswith("{") and line]
    assert events == [
        "SessionStart",
        "UserPromptSubmit",
        "Notification",
        "PreToolUse",
        "Stop",
        "UserPromptSubmit",
        "Stop",
        "SessionEnd",
    ]
    payloads = [json.loads(line) for line in lines if line.startswith("{")]
    assert payloads[2]["message"] == "May I?"
    assert payloads[2]["hook_event_name"] == "Notification"
    assert payloads[3]["tool_name"] == "Bash"
    assert payloads[5]["prompt"] == "hello"
    assert all(p["cwd"] == str(workdir) for p in payloads)
