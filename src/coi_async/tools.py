"""The AI coding tools coi can run, and what it needs to know about each. Pure: no I/O.

A tool says how to start a new session and resume an old one, where it keeps its state in the
user's home (the directory coi saves and restores), which settings make it run unattended in a
sandbox, and how to find its own conversation id in a saved copy of that state.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from coi_async.errors import ConfigError

Settings = dict[str, Any]


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    # The executable, looked up on PATH inside the container; `tool.binary` in config overrides it.
    binary: str
    # The state directory under the home directory that sessions save and restore ("" for tools
    # configured only through the environment: nothing to save then).
    config_dir: str
    # Where the tool keeps conversations, relative to `config_dir`, and their file suffix.
    conversations_dir: str = ""
    conversation_suffix: str = ""
    # Files in the host's `~/<config_dir>` copied into fresh sessions (credentials, preferences).
    host_files: tuple[str, ...] = ()
    # The settings file inside `config_dir` that the sandbox settings are merged into.
    settings_file: str = ""
    # A file beside `config_dir` in the home directory (e.g. ~/.claude.json) that also gets them.
    home_settings_file: str = ""
    base_args: tuple[str, ...] = ()
    session_id_flag: str = ""
    resume_flag: str = ""
    # Continue the most recent conversation of the working directory (`--continue`).
    continue_flag: str = ""
    # With resume (or continue): the conversation goes on as a copy under a new id of the tool's,
    # the original left as it was (`--fork-session`); "" for tools that cannot fork one.
    fork_flag: str = ""
    sandbox_settings: Mapping[str, Any] = msgspec.field(default_factory=dict)
    # The hosts the tool itself talks to (its API, sign-in, telemetry): always in an egress allowlist.
    api_hosts: tuple[str, ...] = ()

    @property
    def sessions_dir_name(self) -> str:
        """The directory under `~/.coi` that holds this tool's saved sessions."""
        return f"sessions-{self.name}"

    @property
    def saves_state(self) -> bool:
        return bool(self.config_dir)

    def new_session_command(self, session_id: str, *, binary: str = "") -> list[str]:
        """argv that starts a new conversation under coi's session id."""
        argv = [binary or self.binary, *self.base_args]
        if self.session_id_flag:
            argv += [self.session_id_flag, session_id]
        return argv

    def resume_command(self, cli_session_id: str | None, *, binary: str = "") -> list[str]:
        """argv that resumes a conversation: the given one, else the tool's most recent."""
        argv = [binary or self.binary, *self.base_args]
        if self.resume_flag:
            argv.append(self.resume_flag)
            if cli_session_id:
                argv.append(cli_session_id)
        return argv

    @property
    def can_fork(self) -> bool:
        return bool(self.fork_flag and self.resume_flag)

    def fork_command(self, cli_session_id: str | None, *, binary: str = "") -> list[str]:
        """argv that starts a new conversation holding a copy of the given one so far (else of
        the working directory's most recent one); the tool gives it a new id of its own."""
        argv = [binary or self.binary, *self.base_args]
        if cli_session_id or not self.continue_flag:
            argv.append(self.resume_flag)
            if cli_session_id:
                argv.append(cli_session_id)
        else:
            argv.append(self.continue_flag)
        return [*argv, self.fork_flag]

    def discover_session_id(self, entries: Iterable[tuple[str, float]]) -> str | None:
        """The tool's own id of the conversation to resume, from a saved conversations directory.

        `entries` are (file name, mtime) pairs of `<config_dir>/<conversations_dir>`; the newest
        conversation wins (ties by name), so a session that was resumed several times resumes
        its latest conversation.
        """
        if not self.conversation_suffix:
            return None
        found = [
            (mtime, name[: -len(self.conversation_suffix)])
            for name, mtime in entries
            if name.endswith(self.conversation_suffix) and len(name) > len(self.conversation_suffix)
        ]
        if not found:
            return None
        return max(found)[1]

    def settings(self) -> Settings:
        """A private copy of the sandbox settings (callers may mutate it)."""
        return copy.deepcopy(dict(self.sandbox_settings))


CLAUDE = Tool(
    name="claude",
    binary="claude",
    config_dir=".claude",
    # Claude Code names the project directory after the cwd with "/" replaced by "-".
    conversations_dir="projects/-workspace",
    conversation_suffix=".jsonl",
    host_files=(".credentials.json", "config.yml", "settings.json"),
    settings_file="settings.json",
    home_settings_file=".claude.json",
    base_args=("--verbose", "--permission-mode", "bypassPermissions"),
    session_id_flag="--session-id",
    resume_flag="--resume",
    continue_flag="--continue",
    fork_flag="--fork-session",
    sandbox_settings={
        "allowDangerouslySkipPermissions": True,
        "bypassPermissionsModeAccepted": True,
        "permissions": {"defaultMode": "bypassPermissions"},
    },
    api_hosts=(
        "api.anthropic.com",
        "console.anthropic.com",
        "statsig.anthropic.com",
        "platform.claude.com",
        "claude.ai",
    ),
)

TOOLS: Mapping[str, Tool] = {tool.name: tool for tool in (CLAUDE,)}
DEFAULT_TOOL = CLAUDE.name


def get_tool(name: str) -> Tool:
    try:
        return TOOLS[name]
    except KeyError:
        supported = ", ".join(sorted(TOOLS))
        raise ConfigError(f"unknown tool: {name} (supported: {supported})") from None


def deep_merge(user: Mapping[str, Any], sandbox: Mapping[str, Any]) -> Settings:
    """The user's settings with the sandbox settings laid over them, dicts merged at every depth.

    A user key is never dropped: where both sides hold a dict they are merged key by key; only a
    key the sandbox sets to a non-dict replaces the user's value (the sandbox must win there, or
    the tool would stop to ask for permissions). Neither input is modified.
    """
    merged: Settings = copy.deepcopy(dict(user))
    for key, value in sandbox.items():
        mine = merged.get(key)
        if isinstance(mine, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(mine, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
