"""The gate a new session's tool waits behind while coi finishes its setup (tmux.py's
`wrapped_command`, start.py's `early_tmux`), run by bash in a real container: the tool starts
only once the gate file is there, and takes the file away; without it, the tool never starts and
the pane says why. And a tmux session started behind a gate in a home that has no place for it
yet: the session is there at once, its tool once coi opens the gate."""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from coi_async.incus import IncusClient
from coi_async.orchestration.sessions.tmux import (
    GATE_MISSED,
    TmuxSession,
    new_gate,
    user_env,
    wrapped_command,
)
from tests.helpers import DEBIAN_IMAGE, running

pytestmark = pytest.mark.incus

GATE = "/home/code/.local/state/coi-tmux/ready-test"
TOOL = ["sh", "-c", "echo TOOL-RAN >>/root/tool.log"]


@pytest.fixture
async def debian(incus: IncusClient, unique: str) -> AsyncIterator[str]:
    async with running(incus, DEBIAN_IMAGE, f"{unique}-gate"):
        yield f"{unique}-gate"


async def shell(incus: IncusClient, name: str, script: str) -> str:
    done = await incus.exec(name, ["sh", "-c", script])
    assert done.ok, done.stderr
    return done.stdout.decode()


async def test_the_tool_waits_for_its_gate_and_takes_it_away(incus: IncusClient, debian: str) -> None:
    pane = wrapped_command(TOOL, gate=GATE, wait_s=30)
    await shell(incus, debian, f"mkdir -p {GATE.rsplit('/', 1)[0]}; touch /root/tool.log")
    # As tmux runs it: detached from the exec, which returns at once.
    await incus.exec(
        debian, ["sh", "-c", 'setsid -f bash -c "$1" </dev/null >/root/pane.log 2>&1', "sh", pane]
    )
    await anyio.sleep(1.0)
    assert await shell(incus, debian, "cat /root/tool.log") == ""  # held back

    await shell(incus, debian, f": >{GATE}")
    await shell(
        incus, debian, "for i in $(seq 100); do grep -q TOOL-RAN /root/tool.log && exit; sleep 0.1; done"
    )
    assert await shell(incus, debian, f"test -e {GATE} && echo still-there; true") == ""
    assert await shell(incus, debian, "cat /root/tool.log") == "TOOL-RAN\n"  # once


async def test_without_its_gate_the_tool_never_starts(incus: IncusClient, debian: str) -> None:
    pane = wrapped_command(TOOL, gate=GATE, wait_s=0.5)
    done = await incus.exec(debian, ["bash", "-c", pane], stdin=b"")
    assert GATE_MISSED in done.stdout.decode()
    assert await shell(incus, debian, "cat /root/tool.log 2>/dev/null; true") == ""


async def test_a_tmux_session_started_behind_a_gate_runs_its_tool_once_coi_opens_it(
    incus: IncusClient, debian: str
) -> None:
    # A home without the tmux directory yet (a container that never had a coi tmux session).
    env = user_env(home="/home/code", user="code", term="xterm") | {"TMUX_TMPDIR": "/home/code/.tmux-test"}
    tmux = TmuxSession(incus, debian, "gated", uid=1000, env=env)
    gate = new_gate("/home/code")
    await tmux.start(["sh", "-c", "echo TOOL-RAN >/home/code/tool.log; sleep 600"], gate=gate)
    assert await tmux.exists()
    await anyio.sleep(0.5)
    assert await shell(incus, debian, "cat /home/code/tool.log 2>/dev/null; true") == ""

    await tmux.open_gate(gate)
    await shell(incus, debian, "for i in $(seq 100); do [ -s /home/code/tool.log ] && exit; sleep 0.1; done")
    assert await shell(incus, debian, "cat /home/code/tool.log") == "TOOL-RAN\n"


async def test_a_gate_directory_the_agent_made_a_link_keeps_the_gate_inside_its_container(
    incus: IncusClient, debian: str, tmp_path: Path
) -> None:
    # The agent of the session a fork copies (root inside) turns the gate's directory into a
    # link to a path that is also the host's; coi's gate write resolves it in the container.
    outside = tmp_path / "gate-escape"
    gate = new_gate("/home/code")
    directory = posixpath.dirname(gate)
    await shell(
        incus, debian, f"mkdir -p {outside} {posixpath.dirname(directory)} && ln -sfn {outside} {directory}"
    )
    tmux = TmuxSession(
        incus, debian, "gated", uid=1000, env=user_env(home="/home/code", user="code", term="xterm")
    )
    await tmux.open_gate(gate)
    assert not outside.exists()  # nothing of it on the host
    name = posixpath.basename(gate)
    assert await shell(incus, debian, f"stat -c '%u %a %s' {outside}/{name}") == "1000 600 0\n"
