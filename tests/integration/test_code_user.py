"""A session as a non-default code user (`incus.code_user = "dev"`, `code_uid = 1001`, a user the
coi-test-debian image has): `coi shell`, its save, `coi attach` and a bulk `coi shutdown` all work
in /home/dev, never in the default /home/code."""

from __future__ import annotations

import json

import pytest

from coi_async.naming import KEY_UID, KEY_USER
from tests.integration.shell_harness import ShellWorld, detach, killing, talk

pytestmark = [pytest.mark.incus, pytest.mark.timeout(300)]

CONFIG = '\n[incus]\ncode_user = "dev"\ncode_uid = 1001\n'
HOME = "/home/dev"


@pytest.fixture
def shell_config() -> str:
    return CONFIG


async def test_shell_attach_shutdown_as_another_code_user(world: ShellWorld) -> None:
    name = world.container(1)
    # coi shell: the tool runs as dev (HOME=/home/dev); a detach saves from /home/dev/.claude.
    with killing(world.spawn("shell")) as child:
        talk(child, "hello as dev")
        assert detach(child) == 0
    instance = await world.instance(1)
    assert instance is not None
    assert instance.running
    assert (instance.config[KEY_USER], instance.config[KEY_UID]) == ("dev", "1001")
    [session] = world.saved_sessions()
    assert "hello as dev" in world.conversation(session), "the data saved is the tool's, from /home/dev"
    meta = json.loads((session / "metadata.json").read_text())
    assert meta["container_name"] == name

    # The credentials went to dev's home, owned by dev.
    creds = await world.incus.pull_file(name, f"{HOME}/.claude/.credentials.json")
    assert b"test-token" in creds.data
    assert (creds.info.uid, creds.info.gid, creds.info.mode) == (1001, 1001, 0o600)
    [conversation] = [
        p for p in (session / ".claude" / "projects" / "-workspace").iterdir() if p.suffix == ".jsonl"
    ]
    written = await world.incus.pull_file(name, f"{HOME}/.claude/projects/-workspace/{conversation.name}")
    assert written.info.uid == 1001, "the tool ran as dev"

    # coi attach: dev's tmux session (its socket is /tmp/tmux-1001), the conversation on screen.
    with killing(world.spawn("attach")) as child:
        child.expect("hello as dev")
        child.sendline("second as dev")
        child.expect("Claude: second as dev")
        assert detach(child) == 0
    assert "second as dev" in world.conversation(session)

    # Something only dev's home has, and a decoy in code's: bulk shutdown must save the former.
    await world.incus.push_file(name, f"{HOME}/.claude/marker-dev", b"dev\n", uid=1001, gid=1001, mode=0o644)
    await world.incus.make_directory(name, "/home/code/.claude", uid=1000, gid=1000, mode=0o755)
    await world.incus.push_file(
        name, "/home/code/.claude/marker-code", b"code\n", uid=1000, gid=1000, mode=0o644
    )
    done = await world.run("shutdown", "--force", name)
    assert done.code == 0, (done.stdout, done.stderr)
    assert await world.instance(1) is None, "shutdown removes an ephemeral session container"
    assert world.saved_sessions() == [session], "shutdown saves into the container's own session"
    assert (session / ".claude" / "marker-dev").read_text() == "dev\n"
    assert not (session / ".claude" / "marker-code").exists(), "nothing comes from /home/code"
    assert "second as dev" in world.conversation(session)
