"""The AI coding tools coi can run, and what it needs to know about each. Pure: no I/O.

A tool says how to start a new session and resume an old one, where it keeps its state in the
user's home (the directory coi saves and restores), which settings make it run unattended in a
sandbox, and how to find its own conversation id in a saved copy of that state.

Every session's home starts empty but for what coi restores from that session's own save, so
"the tool's most recent conversation in /workspace" is always this session's: tools whose ids
coi cannot know in advance (codex, gemini, opencode) are resumed that way.
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
    # The npm package `coi build` installs it from.
    package: str = ""
    # The oldest Node.js major release it runs on (0: whichever the image's Debian ships).
    node_major: int = 0
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
    # Those of them that hold secrets: written 0600 (the others 0644).
    secret_files: tuple[str, ...] = ()
    # The host file without which the tool cannot sign in (its absence is reported); "" for none.
    credentials_file: str = ""
    # The settings file inside `config_dir` that the sandbox settings are merged into.
    settings_file: str = ""
    # A file beside `config_dir` in the home directory (e.g. ~/.claude.json) that also gets them.
    home_settings_file: str = ""
    base_args: tuple[str, ...] = ()
    session_id_flag: str = ""
    resume_flag: str = ""
    # What resumes the most recent conversation when no id is known; () means `resume_flag` alone.
    resume_latest: tuple[str, ...] = ()
    # Continue the most recent conversation of the working directory (`--continue`).
    continue_flag: str = ""
    # With resume (or continue): the conversation goes on as a copy under a new id of the tool's,
    # the original left as it was (`--fork-session`); "" for tools that cannot fork one.
    fork_flag: str = ""
    sandbox_settings: Mapping[str, Any] = msgspec.field(default_factory=dict)
    # Environment of every process of the session (settings a tool takes only from there).
    environment: Mapping[str, str] = msgspec.field(default_factory=dict)
    # The hosts the tool itself talks to (its API, sign-in, telemetry): always in an egress allowlist.
    api_hosts: tuple[str, ...] = ()
    # How the tool tells coi what its agent is doing: "hooks" (it runs commands coi configures)
    # or "none" (coi can only see whether its process runs).
    agent_state: str = "none"

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
        if cli_session_id and self.resume_flag:
            argv += [self.resume_flag, cli_session_id]
        elif self.resume_flag:
            argv += self.resume_latest or (self.resume_flag,)
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
    package="@anthropic-ai/claude-code",
    host_files=(".credentials.json", "config.yml", "settings.json"),
    secret_files=(".credentials.json",),
    credentials_file=".credentials.json",
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
    agent_state="hooks",
)

# OpenAI Codex CLI (developers.openai.com/codex): state in ~/.codex ($CODEX_HOME), conversations
# as ~/.codex/sessions/YYYY/MM/DD/rollout-<time>-<uuid>.jsonl, sign-in in auth.json, preferences
# in config.toml (TOML: copied as it is, never merged). `codex resume <id>` / `codex resume
# --last` (the latest of the working directory); ids are the tool's own, never chosen by coi.
# The container is the sandbox: Codex's own (Landlock/seccomp) is bypassed with its approvals.
CODEX = Tool(
    name="codex",
    binary="codex",
    package="@openai/codex",
    config_dir=".codex",
    host_files=("auth.json", "config.toml"),
    secret_files=("auth.json",),
    credentials_file="auth.json",
    base_args=("--dangerously-bypass-approvals-and-sandbox",),
    resume_flag="resume",
    resume_latest=("resume", "--last"),
    api_hosts=("api.openai.com", "auth.openai.com", "chatgpt.com"),
)

# Google Gemini CLI (geminicli.com/docs): state in ~/.gemini, conversations in
# ~/.gemini/tmp/<project hash>/chats/, Google sign-in in oauth_creds.json, preferences in
# settings.json (merged like Claude's). A new conversation gets coi's session id
# (`--session-id`), `--resume <uuid>` continues it (`--resume latest` the project's newest);
# `--yolo` approves every action, `--skip-trust` trusts /workspace without asking.
GEMINI = Tool(
    name="gemini",
    binary="gemini",
    package="@google/gemini-cli",
    node_major=20,
    config_dir=".gemini",
    host_files=("oauth_creds.json", "google_accounts.json", "settings.json"),
    secret_files=("oauth_creds.json", "google_accounts.json"),
    credentials_file="oauth_creds.json",
    settings_file="settings.json",
    base_args=("--yolo", "--skip-trust"),
    session_id_flag="--session-id",
    resume_flag="--resume",
    resume_latest=("--resume", "latest"),
    api_hosts=(
        "generativelanguage.googleapis.com",
        "cloudcode-pa.googleapis.com",
        "oauth2.googleapis.com",
        "accounts.google.com",
        "www.googleapis.com",
        "play.googleapis.com",
    ),
)

# opencode (opencode.ai/docs): data (conversations under storage/, provider keys in auth.json)
# in ~/.local/share/opencode, which is what is saved; its config in ~/.config/opencode is not
# carried in. `--session <id>` / `--continue` (the latest of the project). Permissions come from
# its config; OPENCODE_CONFIG_CONTENT, the runtime override layer, sets them all to "allow".
OPENCODE = Tool(
    name="opencode",
    binary="opencode",
    package="opencode-ai",
    config_dir=".local/share/opencode",
    host_files=("auth.json",),
    secret_files=("auth.json",),
    credentials_file="auth.json",
    resume_flag="--session",
    resume_latest=("--continue",),
    environment={"OPENCODE_CONFIG_CONTENT": '{"permission":"allow"}'},
    # Its own sign-in and model list, and the providers it is most often used with.
    api_hosts=(
        "opencode.ai",
        "models.dev",
        "api.anthropic.com",
        "api.openai.com",
        "generativelanguage.googleapis.com",
        "openrouter.ai",
    ),
)

TOOLS: Mapping[str, Tool] = {tool.name: tool for tool in (CLAUDE, CODEX, GEMINI, OPENCODE)}
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
