"""`coi tmux ...` end to end, on a Debian container with a tmux session owned by uid 1000, the way
`coi shell` leaves one. The reference ran tmux as root and saw nothing (upstream #588)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pexpect
import pytest

from coi_async.incus import IncusClient
from tests.coi_cli import COI, coi, coi_env
from tests.helpers import DEBIAN_IMAGE, busybox, from_image, remove_instance, require_image

pytestmark = pytest.mark.incus

CODE_ENV = {"HOME": "/home/code", "TERM": "xterm-256color"}


@pytest.fixture
async def debian(incus: IncusClient, unique: str) -> AsyncIterator[str]:
    await require_image(incus, DEBIAN_IMAGE)
    name = f"h5-{unique}-tmux"
    await incus.create_instance(from_image(name, DEBIAN_IMAGE))
    try:
        # systemd empties /tmp while it boots, which would take a tmux socket made earlier with it.
        with anyio.fail_after(90):
            await incus.exec(name, ["systemctl", "is-system-running", "--wait"])
        yield name
    finally:
        await remove_instance(incus, name)


async def wait_for_screen(incus_project: str, name: str, text: str) -> str:
    screen = ""
    with anyio.move_on_after(15):
        while text not in screen:
            run = await coi("tmux", "capture", name, project=incus_project)
            assert run.code == 0, run.stderr
            screen = run.stdout
            await anyio.sleep(0.2)
    return screen


async def test_send_capture_list_as_the_session_user(
    incus: IncusClient, incus_project: str, unique: str, debian: str
) -> None:
    prefix = f"h5-{unique}-"
    none = await coi("tmux", "list", project=incus_project, COI_CONTAINER_PREFIX=prefix)
    assert (none.code, none.stdout) == (0, "No active sessions\n")
    no_session = await coi("tmux", "send", debian, "echo hi", project=incus_project)
    no_session.one_error(1, f"no tmux session coi-{debian} in container {debian}")

    started = await incus.exec(
        debian,
        ["tmux", "new-session", "-d", "-s", f"coi-{debian}", "-x", "120", "-y", "30", "bash", "--norc"],
        env=CODE_ENV,
        user=1000,
        group=1000,
        cwd="/home/code",
    )
    assert started.ok, started.stderr
    # A container of the prefix without tmux is reported, and the listing goes on.
    other = f"{prefix}plain"
    await incus.create_instance(busybox(other))
    try:
        listed = await coi("tmux", "list", project=incus_project, COI_CONTAINER_PREFIX=prefix)
        assert listed.code == 0, listed.stderr
        assert listed.stdout == f"Active sessions:\n  - {debian} (tmux session: coi-{debian})\n"
        assert f"Warning: cannot check {other}: tmux is not installed" in listed.stderr
    finally:
        await remove_instance(incus, other)

    sent = await coi("tmux", "send", debian, "echo h5-$((6*7)) $(id -u)", project=incus_project)
    assert (sent.code, sent.stdout) == (0, f"Sent command to session coi-{debian}\n")
    screen = await wait_for_screen(incus_project, debian, "h5-42 1000")
    assert "h5-42 1000" in screen
    # A command that starts with "-" is typed, not taken for a tmux option.
    dash = await coi("tmux", "send", debian, "--", "-x", project=incus_project)
    assert dash.code == 0, dash.stderr
    assert "-x" in await wait_for_screen(incus_project, debian, "-x: command not found")


async def test_errors(incus: IncusClient, incus_project: str, unique: str) -> None:
    ghost = f"h5-{unique}-ghost"
    (await coi("tmux", "send", ghost, "ls", project=incus_project)).one_error(
        1, f"container '{ghost}' not found"
    )
    (await coi("tmux", "capture", ghost, project=incus_project)).one_error(1, "not found")
    stopped = f"h5-{unique}-stopped"
    await incus.create_instance(busybox(stopped, start=False))
    try:
        run = await coi("tmux", "capture", stopped, project=incus_project)
        run.one_error(1, f"container {stopped} is not running")
    finally:
        await remove_instance(incus, stopped)
    (await coi("tmux", "send", "onlyname", project=incus_project)).one_error(2, "Missing argument 'COMMAND'")
    (await coi("tmux", "capture", project=incus_project)).one_error(2, "Missing argument 'CONTAINER'")


async def test_root_started_session_of_a_low_level_container(
    incus: IncusClient, incus_project: str, unique: str, debian: str
) -> None:
    """A tmux session started by hand as root (`coi container exec NAME -- tmux new-session ...`)
    is found by send, capture, list and attach; without one, attach says how to get a shell."""
    env = coi_env(project=incus_project, prefix=f"h5-{unique}-")
    bare = await coi("attach", debian, env=env)
    assert bare.code == 1, (bare.stdout, bare.stderr)
    assert "No tmux session found in container." in bare.stdout
    assert f"  coi attach {debian} --bash" in bare.stdout
    assert "Traceback" not in bare.stderr

    started = await coi(
        "container", "exec", debian, "--",
        "tmux", "new-session", "-d", "-s", f"coi-{debian}", "-x", "100", "-y", "30", "bash", "--norc",
        env=env,
    )  # fmt: skip
    assert started.code == 0, started.stderr
    listed = await coi("tmux", "list", env=env)
    assert listed.stdout == f"Active sessions:\n  - {debian} (tmux session: coi-{debian})\n"
    sent = await coi("tmux", "send", debian, "echo h10-$((6*7)) $(id -u)", env=env)
    assert sent.code == 0, sent.stderr
    assert "h10-42 0" in await wait_for_screen(incus_project, debian, "h10-42 0")

    child = pexpect.spawn(COI, ["attach", debian], env=env, dimensions=(30, 100), timeout=30)
    try:
        child.expect(f"Attaching to {debian}")
        child.expect("h10-42 0")
        child.sendline("echo attached-$((7*6))")
        child.expect("attached-42")
        child.send("\x02d")  # Ctrl-b d
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.terminate(force=True)
    still = await coi("tmux", "list", env=env)
    assert f"  - {debian} (tmux session: coi-{debian})" in still.stdout, "a detach keeps the session"
