"""The agent state's pure parts: the hooks coi merges into Claude Code's settings, the commands
they run (in a real sh), the parsing of the record they write, and which sessions have one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from coi_async.agent_state import (
    HOOK_MARKER,
    MESSAGE_MAX,
    RECORD_MAX_BYTES,
    UNKNOWN,
    AgentState,
    agent_hooks,
    hook_command,
    parse_record,
    printable,
    record_path,
    with_hooks,
)
from coi_async.config import resolve_config
from coi_async.incus.models import Instance, LifecycleEvent
from coi_async.orchestration.fleet.agent import without_reading
from coi_async.orchestration.fleet.events import _our_read
from coi_async.orchestration.fleet.snapshot import Sample, rows
from coi_async.orchestration.sessions.credentials import merge_settings
from coi_async.orchestration.sessions.model import Session
from coi_async.tools import CLAUDE

NOW = 1_800_000_000.0
USER_HOOK = {"hooks": [{"type": "command", "command": "touch /home/code/mine"}]}


def _commands(settings: dict[str, Any], event: str) -> list[str]:
    return [h["command"] for group in settings["hooks"][event] for h in group["hooks"]]


def test_every_event_gets_one_hook_writing_its_state_and_pre_tool_use_matches_every_tool() -> None:
    hooks = agent_hooks("/home/code")
    assert set(hooks) == {
        "SessionStart",
        "UserPromptSubmit",
        "PreToolUse",
        "Notification",
        "Stop",
        "SessionEnd",
    }
    assert hooks["PreToolUse"][0]["matcher"] == "*"
    assert "matcher" not in hooks["Stop"][0]
    for event, state in (("UserPromptSubmit", "working"), ("Notification", "waiting"), ("Stop", "idle")):
        [command] = _commands({"hooks": hooks}, event)
        assert f"{state} " in command
        assert command.endswith(HOOK_MARKER)
        assert "/home/code/.coi/agent-state.json" in command


def test_user_hooks_stay_first_and_coi_hooks_are_appended_once() -> None:
    user: dict[str, Any] = {"hooks": {"Stop": [USER_HOOK], "PostToolUse": [USER_HOOK]}, "env": {"A": "1"}}
    ours = agent_hooks("/home/code")
    merged = with_hooks(user, ours)
    assert merged["env"] == {"A": "1"}
    assert merged["hooks"]["Stop"][0] == USER_HOOK
    assert merged["hooks"]["Stop"][1:] == ours["Stop"]
    assert merged["hooks"]["PostToolUse"] == [USER_HOOK], "events coi does not use are left alone"
    assert merged["hooks"]["Notification"] == ours["Notification"]
    assert user["hooks"]["Stop"] == [USER_HOOK], "the input is not modified"
    again = with_hooks(merged, agent_hooks("/home/other"))
    assert _commands(again, "Stop")[0] == "touch /home/code/mine"
    assert len(again["hooks"]["Stop"]) == 2, "coi's earlier hooks are replaced, not repeated"
    assert "/home/other/" in _commands(again, "Stop")[1]


def test_hooks_that_are_not_what_claude_expects_are_left_as_they_are() -> None:
    ours = agent_hooks("/home/code")
    assert with_hooks({"hooks": "nonsense"}, ours) == {"hooks": "nonsense"}
    odd = with_hooks({"hooks": {"Stop": {"not": "a list"}}}, ours)
    assert odd["hooks"]["Stop"] == {"not": "a list"}
    assert odd["hooks"]["PreToolUse"] == ours["PreToolUse"]


def test_merge_settings_adds_the_hooks_to_the_host_and_session_settings() -> None:
    host = json.dumps({"hooks": {"UserPromptSubmit": [USER_HOOK]}, "model": "x"}).encode()
    data, skipped = merge_settings(None, host, CLAUDE.sandbox_settings, agent_hooks("/home/code"))
    assert skipped == []
    merged = json.loads(data)
    assert merged["model"] == "x"
    assert merged["permissions"]["defaultMode"] == "bypassPermissions"
    prompt = _commands(merged, "UserPromptSubmit")
    assert prompt[0] == "touch /home/code/mine"
    assert prompt[1].endswith(HOOK_MARKER)
    # A resume merges again over the session's own file: still one copy of coi's hooks.
    data2, _ = merge_settings(data, host, CLAUDE.sandbox_settings, agent_hooks("/home/code"))
    assert json.loads(data2) == merged
    plain, _ = merge_settings(None, host, CLAUDE.sandbox_settings)
    assert json.loads(plain)["hooks"] == {"UserPromptSubmit": [USER_HOOK]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"state":"working","since":1700000000}', AgentState(state="working", since=1700000000.0)),
        (
            b'{"state":"waiting","since":1700000000.5,"message":"Claude needs your permission"}',
            AgentState(state="waiting", since=1700000000.5, message="Claude needs your permission"),
        ),
        (b'{"state":"idle","since":9999999999}', AgentState(state="idle", since=NOW)),
        (b'{"state":"exited","since":-5}', AgentState(state="exited", since=NOW)),
        (
            b'{"state":"waiting","since":1,"message":"a\\u0007b\\nc\\u001b[31m"}',
            AgentState(state="waiting", since=1.0, message="a b c [31m"),
        ),
        (
            '{"state":"idle","since":1,"message":"caf\u00e9"}'.encode(),
            AgentState(state="idle", since=1.0, message="caf\u00e9"),
        ),
        (
            b'{"state":"idle","since":1,"message":"caf\xc3"}',
            AgentState(state="idle", since=1.0, message="caf\ufffd"),
        ),
    ],
)
def test_a_good_record_gives_its_state(data: bytes, expected: AgentState) -> None:
    assert parse_record(data, now=NOW) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"[1, 2]",
        b'{"state":"partying","since":1}',
        b'{"state":"starting","since":1}',
        b'{"state":"idle"}',
        b'{"state":"idle","since":"yesterday"}',
        b'{"state":"idle","since":1,"extra":true}',
        b'{"state":"idle","since":1,"message":5}',
        b'{"state":"idle","since":1e999}',
        b'{"state":"idle","since":1,"message":"' + b"x" * RECORD_MAX_BYTES + b'"}',
        b'{"state":"idle","since":1}' + b" " * RECORD_MAX_BYTES,
    ],
)
def test_anything_else_is_unknown(data: bytes) -> None:
    assert parse_record(data, now=NOW) == AgentState(state=UNKNOWN)


def test_messages_are_printable_and_bounded() -> None:
    assert printable("x" * 500) == "x" * MESSAGE_MAX
    assert printable("\u202eevil\u0000 \t two") == "evil two"


@pytest.mark.parametrize("shell", [["sh"], ["busybox", "sh"]])
def test_the_hook_commands_write_a_record_that_parses(tmp_path: Path, shell: list[str]) -> None:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"no {shell[0]} here")
    home = str(tmp_path)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    payload = json.dumps(
        {"hook_event_name": "Notification", "message": "Claude needs your permission to use Bash"}
    )
    subprocess.run([*shell, "-c", hook_command("waiting", home)], input=payload.encode(), env=env, check=True)
    record = Path(record_path(home)).read_bytes()
    state = parse_record(record, now=NOW * 10)
    assert (state.state, state.message) == ("waiting", "Claude needs your permission to use Bash")
    assert state.since is not None
    assert state.since > 1_700_000_000
    long = json.dumps({"message": "y" * 1000 + '"\\ tail'})
    subprocess.run([*shell, "-c", hook_command("waiting", home)], input=long.encode(), env=env, check=True)
    assert parse_record(Path(record_path(home)).read_bytes(), now=NOW * 10).message == "y" * MESSAGE_MAX
    subprocess.run([*shell, "-c", hook_command("idle", home)], input=b"{}", env=env, check=True)
    assert parse_record(Path(record_path(home)).read_bytes(), now=NOW * 10).state == "idle"
    assert sorted(p.name for p in Path(record_path(home)).parent.iterdir()) == ["agent-state.json"]


def _session(**changes: Any) -> Session:
    base = Session(
        container="coi-aaaa0000-1",
        slot=1,
        workspace="/w",
        tool="claude",
        session_id="s-1",
        persistent=False,
        uid=1000,
        user="code",
        home="/home/code",
        running=True,
    )
    return msgspec.structs.replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "state"),
    [
        ({}, None),
        ({"running": False}, "exited"),
        ({"tool": "codex"}, "unknown"),
        ({"tool": "no-such-tool"}, "unknown"),
        ({"session_id": ""}, "unknown"),
    ],
)
def test_only_running_sessions_of_a_tool_with_hooks_are_read(
    changes: dict[str, Any], state: str | None
) -> None:
    found = without_reading(_session(**changes))
    assert (found.state if found else None) == state


def test_rows_carry_each_sessions_agent_state() -> None:
    config = resolve_config([], {}, home="/home/someone")
    prefix = config.container_prefix
    names = [f"{prefix}aaaa0000-{slot}" for slot in (1, 2, 3)]
    sample = Sample(
        taken=1.0,
        instances=(
            Instance(name=names[0], status="Running"),
            Instance(name=names[1], status="Running"),
            Instance(name=names[2], status="Stopped"),
        ),
    )
    agents = {names[0]: AgentState(state="waiting", since=5.0, message="May I?")}
    found = {r.container: r for r in rows(sample, None, config, agents)}
    assert (found[names[0]].agent_state, found[names[0]].agent_since) == ("waiting", 5.0)
    assert found[names[0]].agent_message == "May I?"
    assert (found[names[1]].agent_state, found[names[1]].agent_since) == ("unknown", None)
    assert found[names[2]].agent_state == "exited"


@pytest.mark.parametrize(
    ("action", "path", "ours"),
    [
        ("instance-file-retrieved", "/home/code/.coi/agent-state.json", True),
        ("instance-file-retrieved", "/home/code/.claude/settings.json", False),
        ("instance-file-pushed", "/home/code/.coi/agent-state.json", False),
        ("instance-file-retrieved", None, False),
    ],
)
def test_events_leave_out_incusds_news_of_coi_reading_the_records(
    action: str, path: str | None, ours: bool
) -> None:
    context = {} if path is None else {"path": path}
    assert _our_read(LifecycleEvent(action=action, context=context)) is ours
