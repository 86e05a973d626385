"""tools: the registry, command lines, conversation discovery, settings merge."""

from __future__ import annotations

from typing import Any

import pytest

from coi_async.errors import ConfigError
from coi_async.tools import CLAUDE, CODEX, GEMINI, OPENCODE, TOOLS, deep_merge, get_tool


def test_claude_registry_entry() -> None:
    tool = get_tool("claude")
    assert tool is CLAUDE
    assert tool.binary == "claude"
    assert tool.config_dir == ".claude"
    assert tool.sessions_dir_name == "sessions-claude"
    assert tool.saves_state


def test_unknown_tool() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown tool: aider \(supported: claude, codex, gemini, opencode\)"
    ):
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


def test_registry_entries() -> None:
    assert sorted(TOOLS) == ["claude", "codex", "gemini", "opencode"]
    assert [(t.binary, t.package, t.config_dir) for t in (CODEX, GEMINI, OPENCODE)] == [
        ("codex", "@openai/codex", ".codex"),
        ("gemini", "@google/gemini-cli", ".gemini"),
        ("opencode", "opencode-ai", ".local/share/opencode"),
    ]
    for tool in TOOLS.values():
        assert tool.saves_state
        assert tool.api_hosts
        assert set(tool.secret_files) <= set(tool.host_files)
        assert tool.credentials_file in tool.secret_files
        assert tool.sessions_dir_name == f"sessions-{tool.name}"
        assert tool.agent_state == ("hooks" if tool is CLAUDE else "none")
    assert "api.openai.com" in CODEX.api_hosts
    assert "generativelanguage.googleapis.com" in GEMINI.api_hosts
    assert OPENCODE.environment == {"OPENCODE_CONFIG_CONTENT": '{"permission":"allow"}'}


def test_other_tools_command_lines() -> None:
    yolo = "--dangerously-bypass-approvals-and-sandbox"
    # Codex and opencode take no id of coi's: a new session is the bare command.
    assert CODEX.new_session_command("u-1") == ["codex", yolo]
    assert CODEX.resume_command("019a") == ["codex", yolo, "resume", "019a"]
    assert CODEX.resume_command(None) == ["codex", yolo, "resume", "--last"]
    # Gemini CLI does (--session-id), and resumes it by that id.
    gemini = ["gemini", "--yolo", "--skip-trust"]
    assert GEMINI.new_session_command("u-1") == [*gemini, "--session-id", "u-1"]
    assert GEMINI.resume_command(None) == [*gemini, "--resume", "latest"]
    assert GEMINI.resume_command("u-1") == [*gemini, "--resume", "u-1"]
    assert OPENCODE.new_session_command("u-1") == ["opencode"]
    assert OPENCODE.resume_command(None) == ["opencode", "--continue"]
    assert OPENCODE.resume_command("ses_1") == ["opencode", "--session", "ses_1"]
    assert not any(t.can_fork for t in (CODEX, GEMINI, OPENCODE))
    # No conversation ids read back: they resume the latest, which is the session's own.
    assert CODEX.discover_session_id([("rollout-x.jsonl", 1.0)]) is None
