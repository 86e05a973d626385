"""`coi shell` and `coi attach` end to end: a real terminal (pexpect), the real incusd, the fake
Claude CLI of the coi-test-debian image."""

from __future__ import annotations

import json
import signal
import time

import anyio
import pexpect
import pytest

from tests.coi_cli import Run
from tests.integration.shell_harness import DETACH, ShellWorld, detach, finish, killing, talk

pytestmark = [pytest.mark.incus, pytest.mark.timeout(240)]


def _end_session(child: pexpect.spawn) -> None:
    """Leave the tool, then the bash it falls back to: the tmux session ends."""
    child.sendline("exit")
    child.expect(r"code@.*\$ ")
    child.sendline("exit")


async def test_shell_detach_attach_exit_resume(world: ShellWorld) -> None:
    # Start, talk to the tool, detach.
    with killing(world.spawn("shell")) as child:
        talk(child, "hello from the test")
        assert detach(child) == 0
    instance = await world.instance(1)
    assert instance is not None
    assert instance.running, "a detached session keeps its container"
    [session] = world.saved_sessions()
    assert "hello from the test" in world.conversation(session), "detach saves the session data"
    meta = json.loads((session / "metadata.json").read_text())
    assert meta["container_name"] == world.container(1)
    assert meta["persistent"] is False
    assert meta["workspace"] == str(world.workspace)

    # Credentials are in, the sandbox settings merged without losing the user's keys.
    home = "/home/code"
    settings = json.loads(
        (await world.incus.pull_file(world.container(1), f"{home}/.claude/settings.json")).data
    )
    assert settings["env"] == {"MY_VAR": "kept"}
    assert settings["permissions"] == {"allow": ["Bash(ls:*)"], "defaultMode": "bypassPermissions"}
    assert settings["bypassPermissionsModeAccepted"] is True
    dot = json.loads((await world.incus.pull_file(world.container(1), f"{home}/.claude.json")).data)
    assert dot["userID"] == "u-1"
    assert dot["projects"] == {"/x": {}}
    assert dot["allowDangerouslySkipPermissions"]
    creds = await world.incus.pull_file(world.container(1), f"{home}/.claude/.credentials.json")
    assert b"test-token" in creds.data
    assert creds.info.uid == 1000
    assert creds.info.mode == 0o600

    # Attach again (the only session there is): the conversation is on screen; end it.
    with killing(world.spawn("attach")) as child:
        child.expect("hello from the test")
        child.sendline("second message")
        child.expect("Claude: second message")
        _end_session(child)
        child.expect("Container kept running - use 'coi attach' to reconnect")
        assert finish(child) == 0
    instance = await world.instance(1)
    assert instance is not None
    assert instance.running, "`exit` from bash keeps the container running"
    assert "second message" in world.conversation(session), "the session data is saved all the same"

    # `coi attach` gets back in: the tool starts again in a new tmux session, resuming.
    with killing(world.spawn("attach")) as child:
        child.expect("the tool is started again, resuming the conversation")
        child.expect("You: second message")
        talk(child, "after the exit")
        assert detach(child) == 0
    assert "after the exit" in world.conversation(session)

    # Resume: the earlier conversation is restored in a fresh container.
    with killing(world.spawn("shell", "--resume")) as child:
        child.expect(f"Auto-detected session: {session.name}")
        child.expect(r"Resuming session .* \(4 earlier messages\)")
        child.expect("You: hello from the test")
        child.expect("You: second message")
        talk(child, "third message")
        _end_session(child)
        child.expect("Container kept running")
        assert finish(child) == 0
    assert [i.name for i in await world.ours()] == [world.container(1)], "resumed in its running container"
    assert world.saved_sessions() == [session], "a resume keeps the same session id"
    assert "third message" in world.conversation(session)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
async def test_signal_to_coi_saves_and_removes_ephemeral(world: ShellWorld, signum: int) -> None:
    with killing(world.spawn("shell")) as child:
        talk(child, "before the signal")
        child.kill(signum)
        code = finish(child)
    assert code == 128 + signum
    assert await world.ours() == [], "the ephemeral container is removed"
    [session] = world.saved_sessions()
    assert "before the signal" in world.conversation(session)


async def test_persist_from_another_terminal_keeps_the_container(world: ShellWorld) -> None:
    with killing(world.spawn("shell")) as child:
        talk(child, "made persistent meanwhile")
        persisted = await world.run("persist", world.container(1))
        assert persisted.code == 0, persisted.stderr
        child.kill(signal.SIGINT)
        assert finish(child) == 128 + signal.SIGINT
    instance = await world.instance(1)
    assert instance is not None, "the session's own cleanup sees the container is persistent now"
    [session] = world.saved_sessions()
    assert "made persistent meanwhile" in world.conversation(session)


async def test_poweroff_inside_saves_and_removes_ephemeral(world: ShellWorld) -> None:
    with killing(world.spawn("shell")) as child:
        talk(child, "then power off")
        child.sendline("exit")
        child.expect(r"code@.*\$ ")
        child.sendline("sudo poweroff")
        child.expect("Container removed")
        assert finish(child) == 0
    assert await world.ours() == []
    [session] = world.saved_sessions()
    assert "then power off" in world.conversation(session)


async def test_an_agent_that_hangs_the_tmux_check_only_delays_its_own_end(world: ShellWorld) -> None:
    """The agent (root inside) shadows tmux with one that never answers: a detach still ends coi
    within its bounds (the check's 5 s, then the poweroff window), saves the session and keeps
    the container whose state coi could not see, rather than deleting a session that may live."""
    with killing(world.spawn("shell")) as child:
        talk(child, "before the trap")
        child.sendline("exit")
        child.expect(r"code@.*\$ ")
        child.sendline(
            "printf '#!/bin/sh\\nexec sleep 600\\n' | sudo tee /usr/local/bin/tmux >/dev/null"
            " && sudo chmod 755 /usr/local/bin/tmux && echo trap-$((20+3))"
        )
        child.expect("trap-23")
        detached_at = time.monotonic()
        child.send(DETACH)
        child.expect(r"\[detached")
        child.expect("Container kept running", timeout=90)
        assert finish(child) == 0
        # The check's 5 s and the 30 s poweroff window, plus the save: coi's bounds, not the agent's.
        assert time.monotonic() - detached_at < 50
    instance = await world.instance(1)
    assert instance is not None
    assert instance.running
    [session] = world.saved_sessions()
    assert "before the trap" in world.conversation(session)


async def test_persistent_is_kept_and_resumed_in_its_own_container(world: ShellWorld) -> None:
    with killing(world.spawn("shell", "--persistent")) as child:
        talk(child, "persistent hello")
        child.sendline("exit")
        child.expect(r"code@.*\$ ")
        child.sendline("touch ~/installed-tool")
        child.sendline("exit")
        child.expect("Container kept running")
        assert finish(child) == 0
    instance = await world.instance(1)
    assert instance is not None
    assert instance.running
    [session] = world.saved_sessions()
    assert json.loads((session / "metadata.json").read_text())["persistent"] is True

    await world.incus.stop_instance(world.container(1), force=True)
    # A stopped persistent container is restarted in its own slot; the mode is inherited.
    with killing(world.spawn("shell", f"--resume={session.name}")) as child:
        child.expect("Inherited persistent mode from session")
        child.expect("You: persistent hello")
        child.sendline("exit")
        child.expect(r"code@.*\$ ")
        child.sendline("ls ~/installed-tool && exit")
        child.expect("Container kept running")
        assert finish(child) == 0
    assert [i.name for i in await world.ours()] == [world.container(1)]


async def test_ctrl_c_during_setup_leaves_nothing(world: ShellWorld) -> None:
    with killing(world.spawn("shell")) as child:
        child.expect("Setting up session")
        child.kill(signal.SIGINT)
        code = finish(child)
    assert code == 128 + signal.SIGINT
    assert await world.ours() == []


async def test_setup_failure_removes_the_container(world: ShellWorld) -> None:
    # busybox has no tmux and no /home/code: setup fails after the container exists.
    done = await world.run("shell", "--image", "coi-test-busybox")
    assert done.code == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "Traceback" not in done.stderr
    assert await world.ours() == []


async def test_ten_background_shells_take_ten_slots(world: ShellWorld) -> None:
    results: list[Run] = []

    async def one() -> None:
        results.append(await world.run("shell", "--background"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert [r.code for r in results] == [0] * 10, [r.stderr for r in results if r.code]
    names = sorted(i.name for i in await world.ours())
    assert names == sorted(world.container(slot) for slot in range(1, 11))
    assert all("Created background tmux session: coi-" in r.stderr for r in results)
    # Every one has its tmux session, as the code user.
    for slot in (1, 10):
        result = await world.incus.exec(
            world.container(slot),
            ["tmux", "has-session", "-t", f"coi-{world.container(slot)}"],
            env={"HOME": "/home/code"},
            user=1000,
            group=1000,
        )
        assert result.ok, result.stderr


async def test_coi_use_dummy_runs_the_test_stub(world: ShellWorld) -> None:
    with killing(world.spawn("shell", COI_USE_DUMMY="1")) as child:
        child.expect("Using dummy \\(test stub\\) for faster testing")
        child.expect("You: ")
        child.sendline("hello")
        child.expect("hello-BACK")
        assert detach(child) == 0
    [session] = world.saved_sessions()
    assert "hello-BACK" in world.conversation(session), "the stub keeps its state under ~/.claude"


async def test_the_tmux_session_is_there_at_once_and_still_there_after_boot(world: ShellWorld) -> None:
    done = await world.run("shell", "--background")
    assert done.code == 0, done.stderr
    name = world.container(1)

    async def has_session() -> bool:
        result = await world.incus.exec(
            name,
            ["tmux", "has-session", "-t", f"coi-{name}"],
            env={"HOME": "/home/code"},
            user=1000,
            group=1000,
        )
        return result.ok

    assert await has_session()
    # Whatever boot still had to do (systemd-tmpfiles empties /tmp), it did not take the session.
    booted = await world.incus.exec(name, ["systemctl", "is-system-running", "--wait"])
    assert booted.stdout.strip() in (b"running", b"degraded"), booted
    assert await has_session()
    listed = await world.run("tmux", "list")
    assert name in listed.stdout, listed.stderr
