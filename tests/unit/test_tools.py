"""tools: the registry, command lines, conversation discovery, settings merge."""

from __future__ import annotations

from typing import Any

import pytest

from coi_async.errors import ConfigError
from coi_async.tools import CLAUDE, deep_merge, get_tool


def test_claude_registry_entry() -> None:
    tool = get_tool("claude")
    assert tool is CLAUDE
    assert tool.binary == "claude"
    assert tool.config_dir == ".claude"
    assert tool.sessions_dir_name == "sessions-claude"
    assert tool.saves_state


def test_unknown_tool() -> None:
    with pytest.raises(ConfigError, match=r"unknown tool: aider \(supported: claude\)"):
        get_tool("aider")


def test_command_lines() -> None:
    base = ["claude", "--verbose", "--permission-mode", "bypassPermissions"]
    assert CLAUDE.new_session_command("u-1") == [*base, "--session-id", "u-1"]
    assert CLAUDE.resume_command("cli-9") == [*base, "--resume", "cli-9"]
    assert CLAUDE.resume_command(None) == [*base, "--resume"]
    assert CLAUDE.new_session_command("u", binary="dummy")[0] == "dummy"


def test_discover_newest_conversation() -> None:
    entries = [("a.jsonl", 5.0), ("b.jsonl", 9.0), ("notes.txt", 99.0), (".jsonl", 100.0)]
    assert CLAUDE.discover_session_id(entries) == "b"
    assert CLAUDE.discover_session_id([]) is None
    assert CLAUDE.discover_session_id([("x.txt", 1.0)]) is None


def test_settings_are_a_private_copy() -> None:
    mine = CLAUDE.settings()
    mine["permissions"]["defaultMode"] = "ask"
    assert CLAUDE.settings()["permissions"]["defaultMode"] == "bypassPermissions"


def test_deep_merge_keeps_every_user_key() -> None:
    user: dict[str, Any] = {
        "env": {"AWS_REGION": "eu-west-1"},
        "permissions": {"allow": ["Bash(ls)"], "defaultMode": "ask"},
        "theme": "dark",
    }
    merged = deep_merge(user, CLAUDE.settings())
    assert merged == {
        "env": {"AWS_REGION": "eu-west-1"},
        "permissions": {"allow": ["Bash(ls)"], "defaultMode": "bypassPermissions"},
        "theme": "dark",
        "allowDangerouslySkipPermissions": True,
        "bypassPermissionsModeAccepted": True,
    }
    assert user["permissions"]["defaultMode"] == "ask"  # inputs untouched


def test_deep_merge_nested_and_type_clash() -> None:
    assert deep_merge({"a": {"b": {"c": 1, "d": 2}}}, {"a": {"b": {"c": 3}}}) == {
        "a": {"b": {"c": 3, "d": 2}}
    }
    assert deep_merge({"a": 1}, {"a": {"x": 1}}) == {"a": {"x": 1}}
    assert deep_merge({"a": {"x": 1}}, {}) == {"a": {"x": 1}}
