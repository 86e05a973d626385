"""Codex, Gemini CLI and opencode beside Claude Code (`--tool NAME`), end to end: a real terminal
(pexpect), the real incusd and the fakes of the coi-test-debian image (images/fake-claude/)."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pexpect
import pytest

from coi_async.tools import get_tool
from tests.helpers import busybox
from tests.integration.shell_harness import ShellWorld, finish, killing

pytestmark = [pytest.mark.incus, pytest.mark.timeout(240)]

# What each fake says about the unattended settings coi gave it, and the host credentials file.
TOOLS = {
    "codex": ("Codex", "never ask (sandbox bypassed)", "auth.json"),
    "gemini": ("Gemini", "yolo", "oauth_creds.json"),
    "opencode": ("OpenCode", "allow", "auth.json"),
}


def _talk(child: pexpect.spawn, display: str, text: str) -> None:
    child.expect("You: ")
    child.sendline(text)
    child.expect(f"{display}: {text}")


def _leave(child: pexpect.spawn) -> None:
    """Leave the tool, then the bash it falls back to; the container stays for `coi attach`."""
    child.sendline("exit")
    child.expect(r"code@.*\$ ")
    child.sendline("exit")
    child.expect("Container kept running")
    assert finish(child) == 0


def _saved(world: ShellWorld, tool: str) -> list[Path]:
    store = world.home / ".coi" / f"sessions-{tool}"
    return sorted(p for p in store.iterdir() if p.is_dir()) if store.is_dir() else []


def _files_text(root: Path) -> str:
    return "".join(p.read_text() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.parametrize("tool", sorted(TOOLS))
async def test_tool_start_talk_exit_resume(world: ShellWorld, tool: str) -> None:
    display, posture, credentials = TOOLS[tool]
    spec = get_tool(tool)
    host_dir = world.home / spec.config_dir
    host_dir.mkdir(parents=True)
    (host_dir / credentials).write_text('{"token": "host-secret"}')

    with killing(world.spawn("shell", "--tool", tool)) as child:
        child.expect(re.escape(f"Permissions: {posture}"))
        _talk(child, display, "hello from the test")
        _leave(child)
    instance = await world.instance(1)
    assert instance is not None
    assert instance.config["user.coi.tool"] == tool
    pushed = await world.incus.pull_file(world.container(1), f"/home/code/{spec.config_dir}/{credentials}")
    assert b"host-secret" in pushed.data
    assert (pushed.info.uid, pushed.info.mode) == (1000, 0o600)

    listed = await world.run("list", "--format", "json", "--tool", tool)
    assert listed.code == 0, listed.stderr
    [row] = json.loads(listed.stdout)["active_containers"]
    assert (row["name"], row["tool"]) == (world.container(1), tool)

    # Saved and removed: the resume below restores the conversation into a fresh container.
    shut = await world.run("shutdown", world.container(1))
    assert shut.code == 0, shut.stderr
    assert await world.ours() == []
    [session] = _saved(world, tool)
    assert "hello from the test" in _files_text(session / spec.config_dir), "in the tool's own state dir"
    assert json.loads((session / "metadata.json").read_text())["tool"] == tool
    assert _saved(world, "claude") == [], "another tool's store is left alone"

    with killing(world.spawn("shell", "--tool", tool, "--resume")) as child:
        child.expect(f"Auto-detected session: {session.name}")
        child.expect(r"Resuming session .* \(2 earlier messages\)")
        child.expect("You: hello from the test")
        _talk(child, display, "after the resume")
        _leave(child)
    assert _saved(world, tool) == [session], "a resume keeps the same session id"
    assert "after the resume" in _files_text(session / spec.config_dir)

    info = await world.run("info", session.name)
    assert info.code == 0, info.stderr
    assert f"Tool:           {tool}" in info.stdout
    assert f"--resume={session.name} --tool {tool}" in info.stdout


async def test_two_tools_in_one_workspace(world: ShellWorld) -> None:
    claude = await world.run("shell", "--background")
    assert claude.code == 0, claude.stderr
    codex = await world.run("shell", "--background", "--tool", "codex")
    assert codex.code == 0, codex.stderr
    listed = await world.run("list", "--format", "json")
    tools = {c["name"]: c["tool"] for c in json.loads(listed.stdout)["active_containers"]}
    assert tools == {world.container(1): "claude", world.container(2): "codex"}
    text = await world.run("list", "--tool", "codex")
    assert world.container(2) in text.stdout
    assert world.container(1) not in text.stdout
    assert "Tool: codex" in text.stdout

    # Each is saved to its own tool's store.
    shut = await world.run("shutdown", "--force", world.container(1), world.container(2))
    assert shut.code == 0, shut.stderr
    assert await world.ours() == []
    [claude_session] = _saved(world, "claude")
    [codex_session] = _saved(world, "codex")
    assert (claude_session / ".claude").is_dir()
    assert (codex_session / ".codex").is_dir()

    # `--resume` looks at the chosen tool's sessions only; another tool's id names that tool.
    wrong = await world.run("shell", f"--resume={codex_session.name}")
    assert wrong.code == 1
    assert wrong.stderr.strip() == (
        f"Error: session '{codex_session.name}' is a codex session, not claude: "
        f"resume it with 'coi shell --tool codex --resume={codex_session.name}'"
    )
    assert await world.ours() == []


@pytest.mark.parametrize(
    "args",
    [
        ("shell", "--tool", "aider"),
        ("run", "--tool", "aider", "--", "true"),
        ("list", "--tool", "aider"),
        ("attach", "--tool", "aider"),
        ("shell", "--profile", "bad"),
    ],
)
async def test_unknown_tool_is_one_line_and_creates_nothing(world: ShellWorld, args: tuple[str, ...]) -> None:
    config = world.home / ".config" / "coi" / "config.toml"
    config.write_text(config.read_text() + '[profiles.bad]\ntool = "aider"\n')
    done = await world.run(*args)
    assert done.code == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    assert "unknown tool: aider (supported: claude, codex, gemini, opencode)" in line
    assert await world.ours() == []


async def test_a_tool_missing_from_the_image_fails_before_anything_is_made(world: ShellWorld) -> None:
    # An image as `coi build --tools claude` records it (user.coi.tools), made from busybox.
    maker = f"h16-{secrets.token_hex(3)}"
    await world.incus.create_instance(busybox(maker, start=False))
    try:
        fingerprint = await world.incus.publish_image(maker, properties={"user.coi.tools": "claude"})
    finally:
        await world.incus.delete_instance(maker)
    await world.incus.create_image_alias(maker, fingerprint)
    try:
        done = await world.run("shell", "--tool", "codex", "--image", maker)
        assert done.code == 1, done.stderr
        [error] = [line for line in done.stderr.splitlines() if line.startswith("Error")]
        assert error == (
            f"Error: image '{maker}' has no codex (it has claude) - add it with: coi build --tools claude,codex"
        )
        assert await world.ours() == []
        assert _saved(world, "codex") == []
    finally:
        await world.incus.delete_image(fingerprint)
