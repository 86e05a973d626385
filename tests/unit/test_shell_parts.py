"""The pure parts of `coi shell`: settings merge, terminal environment, tmux command, CLI default."""

from __future__ import annotations

import json
import shlex

import pytest

from coi_async.cli.main import cli, default_to_shell
from coi_async.orchestration.sessions.credentials import merge_settings
from coi_async.orchestration.sessions.tmux import sanitize_term, user_env, wrapped_command
from coi_async.tools import CLAUDE

SANDBOX = CLAUDE.sandbox_settings


def test_merge_keeps_every_user_key_and_adds_the_sandbox() -> None:
    host = {"env": {"AWS_REGION": "eu-west-1"}, "permissions": {"allow": ["Bash(ls)"], "deny": ["x"]}}
    data, skipped = merge_settings(None, json.dumps(host).encode(), SANDBOX)
    merged = json.loads(data)
    assert skipped == []
    assert merged["env"] == {"AWS_REGION": "eu-west-1"}
    assert merged["permissions"] == {"allow": ["Bash(ls)"], "deny": ["x"], "defaultMode": "bypassPermissions"}
    assert merged["allowDangerouslySkipPermissions"] is True
    assert data.endswith(b"\n")


def test_merge_layers_existing_then_host_then_sandbox() -> None:
    existing = {"theme": "dark", "model": "old", "permissions": {"defaultMode": "ask", "allow": ["a"]}}
    host = {"model": "new"}
    merged = json.loads(merge_settings(json.dumps(existing).encode(), json.dumps(host).encode(), SANDBOX)[0])
    assert merged["theme"] == "dark"
    assert merged["model"] == "new"
    assert merged["permissions"] == {"defaultMode": "bypassPermissions", "allow": ["a"]}


def test_merge_with_nothing_is_the_sandbox() -> None:
    assert json.loads(merge_settings(None, None, SANDBOX)[0]) == dict(SANDBOX)


def test_unparseable_host_file_is_copied_verbatim() -> None:
    broken = b'{"env": {"A": 1},'  # a user's half-edited file: never dropped
    data, skipped = merge_settings(b'{"x": 1}', broken, SANDBOX)
    assert data == broken
    assert skipped == ["host"]


def test_unparseable_existing_file_gives_way_to_the_host() -> None:
    data, skipped = merge_settings(b"[1, 2]", b'{"a": 1}', SANDBOX)
    assert skipped == ["existing"]
    assert json.loads(data)["a"] == 1


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        (None, "xterm-256color"),
        ("", "xterm-256color"),
        ("xterm-ghostty", "xterm-256color"),
        ("wezterm", "xterm-256color"),
        ("alacritty", "xterm-256color"),
        ("kitty", "xterm-256color"),
        ("tmux-256color", "xterm-256color"),
        ("screen-256color-bce", "xterm-256color"),
        ("xterm", "xterm"),
        ("screen", "screen"),
    ],
)
def test_sanitize_term(term: str | None, expected: str) -> None:
    assert sanitize_term(term) == expected


def test_user_env_sets_what_incusd_does_not_and_sanitises_term() -> None:
    env = user_env(home="/home/code", user="code", term="xterm", extra={"A": "1,2", "TERM": "kitty"})
    assert env["HOME"] == "/home/code"
    assert env["USER"] == "code"
    assert env["PATH"].startswith("/usr/local/sbin")
    assert env["A"] == "1,2"
    assert env["TERM"] == "xterm-256color"
    assert env["IS_SANDBOX"] == "1"


def test_wrapped_command_quotes_and_falls_back_to_bash() -> None:
    command = wrapped_command(["claude", "--resume", "it's; rm -rf /"])
    assert command.startswith("trap : INT; ")
    assert command.endswith("; exec bash")
    assert shlex.split(command.split("; ", 1)[1].rsplit("; ", 1)[0]) == [
        "claude",
        "--resume",
        "it's; rm -rf /",
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], []),
        (["--persistent"], ["shell", "--persistent"]),
        (["--debug", "--slot", "2"], ["--debug", "shell", "--slot", "2"]),
        (["--project", "p", "-w", "/x"], ["--project", "p", "shell", "-w", "/x"]),
        (["--project=p", "--resume"], ["--project=p", "shell", "--resume"]),
        (["--help"], ["--help"]),
        (["list", "--all"], ["list", "--all"]),
        (["nosuchcommand"], ["nosuchcommand"]),
    ],
)
def test_root_flags_run_shell(args: list[str], expected: list[str]) -> None:
    assert default_to_shell(cli, args) == expected


def test_a_gated_command_waits_for_its_file_before_the_tool() -> None:
    command = wrapped_command(["claude"], gate="/home/code/it's here", wait_s=2)
    wait, tool = command.split("rm -f '/home/code/it'\"'\"'s here'; ", 1)
    assert "[ ! -e '/home/code/it'\"'\"'s here' ]" in wait
    assert "-gt 40 ]" in wait  # 2 s of 0.05 s steps
    assert tool == "claude; exec bash"
