"""Sessions and the other commands over `--remote`: run, shell (background and attached), attach,
list, info, tmux, file, image, snapshot, shutdown, kill, clean, a resume, a build; and what a
remote cannot do (see a local workspace or mount, have coi's egress), refused before anything is
made. Against this machine's incusd on loopback HTTPS (harness.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.helpers import BUSYBOX_IMAGE
from tests.integration.remote.harness import REMOTE, Remotes
from tests.integration.shell_harness import detach, killing, talk

pytestmark = pytest.mark.incus


async def test_run_shell_info_shutdown_over_the_remote(remotes: Remotes) -> None:
    world = remotes.world
    assert (await remotes.add()).code == 0
    over = ("--remote", REMOTE)
    ws = f"remote:{world.workspace}"
    (world.workspace / "marker").write_text("on the server")

    ran = await world.run(*over, "run", "--network", "open", "-w", ws, "--", "sh", "-c", "cat marker; pwd")
    assert ran.code == 0, ran.stderr
    assert ran.out == b"on the server/workspace\n"

    started = await world.run(*over, "shell", "--background", "--network", "open", "-w", ws)
    assert started.code == 0, started.stderr
    # The run's container may still be going away in slot 1.
    found = re.search(rf"{world.prefix}{world.hash}-\d+", started.stderr)
    assert found, started.stderr
    name = found[0]
    listed = await world.run(*over, "list", "--format", "json")
    assert name in listed.stdout, (listed.stdout, started.stderr)
    captured = await world.run(
        *over, "container", "exec", name, "--capture", "--", "cat", "/workspace/marker"
    )
    assert "on the server" in captured.stdout, captured.stderr

    shut = await world.run(*over, "shutdown", name)
    assert shut.code == 0, shut.stderr
    assert name not in [i.name for i in await world.ours()]
    # The session's data came back to this machine.
    assert world.saved_sessions(), "the session was saved on the host where coi runs"
    info = await world.run(*over, "info")
    assert info.code == 0, info.stderr
    assert f"Container:      {name}" in info.stdout
    assert f"Workspace:      {world.workspace}" in info.stdout


async def test_what_a_remote_cannot_see_is_refused_before_anything_is_made(remotes: Remotes) -> None:
    world = remotes.world
    assert (await remotes.add()).code == 0
    over = ("--remote", REMOTE)
    (await world.run(*over, "run", "--network", "open", "--", "true")).one_error(
        2, f"workspace {world.workspace} is on this machine", "--workspace remote:PATH"
    )
    (await world.run(*over, "shell", "--background", "--network", "open")).one_error(
        2, f"remote '{REMOTE}' cannot see"
    )
    ws = f"remote:{world.workspace}"
    (await world.run(*over, "run", "-w", ws, "--", "true")).one_error(
        1, "network mode 'restricted' needs coi's egress daemon beside the server's incusd"
    )
    mounted = await world.run(*over, "run", "--network", "open", "-w", ws, "--mount", "/tmp:/x", "--", "true")
    mounted.one_error(2, "mount /tmp:/x is a directory of this machine")
    (await world.run(*over, "run", "-w", "remote:rel", "--", "true")).one_error(2, "must be absolute")
    (await world.run("run", "-w", ws, "--", "true")).one_error(2, "give the remote too")
    (await world.run(*over, "fork", "x", "--worktree")).one_error(2, "--worktree makes each fork's worktree")
    (await world.run(*over, "network", "log")).one_error(2, f"sessions on remote '{REMOTE}'")
    (await world.run(*over, "network", "allow", "x", "example.com")).one_error(2, "unknown container 'x'")
    assert await world.ours() == []


async def test_shell_attach_resume_and_the_other_commands_over_the_remote(
    remotes: Remotes, tmp_path: Path
) -> None:
    world = remotes.world
    assert (await remotes.add()).code == 0
    over = ("--remote", REMOTE, "shell", "--network", "open", "-w", f"remote:{world.workspace}")
    with killing(world.spawn(*over)) as child:
        talk(child, "hello over https")
        assert detach(child) == 0
    name = world.container(1)
    with killing(world.spawn("--remote", REMOTE, "attach", name)) as child:
        child.expect("hello over https")
        talk(child, "attached over https")
        assert detach(child) == 0

    listed = await world.run("--remote", REMOTE, "tmux", "list")
    assert name in listed.stdout, listed.stderr
    source = tmp_path / "pushed.txt"
    source.write_text("pushed over https")
    pushed = await world.run("--remote", REMOTE, "file", "push", str(source), f"{name}:/tmp/pushed.txt")
    assert pushed.code == 0, pushed.stderr
    pulled = tmp_path / "pulled.txt"
    got = await world.run("--remote", REMOTE, "file", "pull", f"{name}:/tmp/pushed.txt", str(pulled))
    assert got.code == 0, got.stderr
    assert pulled.read_text() == "pushed over https"
    images = await world.run("--remote", REMOTE, "image", "list", "--format", "json")
    assert images.code == 0, images.stderr

    snap = await world.run("--remote", REMOTE, "snapshot", "create", name, "over-https")
    assert snap.code == 0, snap.stderr
    snaps = await world.run("--remote", REMOTE, "snapshot", "list", name)
    assert "over-https" in snaps.stdout, snaps.stderr

    shut = await world.run("--remote", REMOTE, "shutdown", name)
    assert shut.code == 0, shut.stderr
    [session] = world.saved_sessions()
    assert "attached over https" in world.conversation(session)

    # The saved session goes back to the remote with --resume.
    with killing(world.spawn(*over, "--resume")) as child:
        child.expect(f"Auto-detected session: {session.name}")
        child.expect("You: attached over https")
        talk(child, "resumed over https")
        assert detach(child) == 0
    resumed = world.container(1)
    forked = await world.run("--remote", REMOTE, "fork", resumed, "--format", "json")
    assert forked.code == 0, forked.stderr
    [copy] = json.loads(forked.stdout)["forks"]
    assert copy["workspace"] == str(world.workspace)
    killed = await world.run("--remote", REMOTE, "kill", "--all", "--force")
    assert killed.code == 0, killed.stderr
    cleaned = await world.run("--remote", REMOTE, "clean", "--all", "--force")
    assert cleaned.code == 0, cleaned.stderr
    assert await world.ours() == []


async def test_a_build_over_a_remote_without_a_nic_is_refused_and_leaves_nothing(
    remotes: Remotes, tmp_path: Path
) -> None:
    world = remotes.world
    assert (await remotes.add()).code == 0
    recipe = tmp_path / "build.sh"
    recipe.write_text("#!/bin/sh\necho built >/etc/h13r-built\n")
    alias = f"h13r-img-{os.getpid()}"
    args = ("build", "custom", alias, "--script", str(recipe), "--base", BUSYBOX_IMAGE)
    done = await world.run("--remote", REMOTE, *args)
    assert done.code != 0
    assert "coi's egress daemon cannot serve a remote's containers" in done.stderr
    assert "Traceback" not in done.stderr
    assert await world.incus.find_image(alias) is None
    assert [
        i.name for i in await world.incus.list_instances() if i.name.startswith(f"{world.prefix}build-")
    ] == []
