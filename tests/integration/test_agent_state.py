"""The agent's own state (issue 14): the hooks coi gives Claude Code, driven through the fake
claude of coi-test-debian in a real session, seen by `coi events`, `coi top` and `coi wait`; and
records written by root in busybox containers named like sessions, which must never fool or
break the fleet view."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from coi_async.incus import IncusClient
from coi_async.naming import KEY_SESSION, KEY_TOOL, KEY_WORKSPACE
from tests.coi_cli import COI, coi, isolated_env
from tests.helpers import DEBIAN_IMAGE, busybox, remove_instance
from tests.integration.shell_harness import ShellWorld

pytestmark = [pytest.mark.incus, pytest.mark.timeout(240)]

PREFIX = "h14a-"
RECORD = "/home/code/.coi/agent-state.json"
USER_MARK = "/home/code/user-hook-fired"


@pytest.fixture
def shell_prefix() -> str:
    return PREFIX


class Events:
    """`coi events --format json` running in the background, its events as they come."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.seen: list[dict[str, Any]] = []
        self._buffer = b""

    async def until(self, check: Any, *, after: int = 0, within_s: float = 30) -> dict[str, Any]:
        """The first event from the `after`th on (seen or to come) for which `check(event)` holds."""
        assert self.process.stdout is not None
        with anyio.fail_after(within_s):
            while True:
                for event in self.seen[after:]:
                    if check(event):
                        return event
                self._buffer += await self.process.stdout.receive()
                *lines, self._buffer = self._buffer.split(b"\n")
                self.seen.extend(json.loads(line) for line in lines if line)

    def agent(self, container: str) -> list[str]:
        return [e["state"] for e in self.seen if e["type"] == "agent-state" and e["container"] == container]


@asynccontextmanager
async def _events(env: dict[str, str], cwd: Path | None = None) -> AsyncIterator[Events]:
    process = await anyio.open_process(
        [COI, "events", "--format", "json"], env=env, cwd=cwd, stderr=subprocess.DEVNULL
    )
    try:
        yield Events(process)
    finally:
        process.kill()
        await process.aclose()


async def _top(env: dict[str, str], cwd: Path | None = None) -> dict[str, dict[str, Any]]:
    done = await coi("top", "--once", "--format", "json", env=env, cwd=cwd)
    assert done.code == 0, done.stderr
    return {r["container"]: r for r in json.loads(done.stdout)}


async def test_a_session_goes_through_its_states_and_every_view_follows(world: ShellWorld) -> None:
    # The user's own hook (one of the events coi uses too) must still fire.
    user_hook = {"hooks": [{"type": "command", "command": f"touch {USER_MARK}"}]}
    (world.home / ".claude" / "settings.json").write_text(
        json.dumps({"hooks": {"UserPromptSubmit": [user_hook]}})
    )
    env = world.env()
    name = world.container(1)
    async with _events(env, world.workspace) as events:
        await events.until(lambda e: e["type"] == "resync")
        started = await world.run("shell", "--background")
        assert started.code == 0, started.stderr

        def agent_event(state: str) -> Any:
            return lambda e: e["type"] == "agent-state" and e["container"] == name and e["state"] == state

        # The fake reports SessionStart: idle.
        await events.until(agent_event("idle"))

        async def step(line: str, state: str) -> dict[str, Any]:
            after = len(events.seen)
            sent = await world.run("tmux", "send", name, line)
            assert sent.code == 0, sent.stderr
            return await events.until(agent_event(state), after=after)

        working = await step("/prompt build the thing", "working")
        assert (working["previous"], working["slot"]) == ("idle", 1)
        assert working["workspace"] == str(world.workspace)
        assert (await _top(env, world.workspace))[name]["agent_state"] == "working"

        waiting = await step("/notify Claude needs your permission to use Bash", "waiting")
        assert waiting["previous"] == "working"
        assert waiting["message"] == "Claude needs your permission to use Bash"
        row = (await _top(env, world.workspace))[name]
        assert row["agent_state"] == "waiting"
        assert row["agent_message"] == "Claude needs your permission to use Bash"
        assert row["agent_since"] is not None
        done = await world.run("wait", name, "--state", "waiting", "--timeout", "30")
        assert done.code == 0, done.stderr
        with anyio.fail_after(20):
            late = await world.run("wait", name, "--state", "idle", "--timeout", "1.5")
        assert late.code == 1, late.stderr
        assert late.stderr.strip() == f"Timed out after 1.5s: {name} not idle"

        await step("/tool Bash", "working")
        await step("/stop", "idle")
        assert (await _top(env, world.workspace))[name]["agent_state"] == "idle"
        done = await world.run("wait", name, "--state", "idle", "--timeout", "30")
        assert done.code == 0, done.stderr

        # A new stream's resync carries the state.
        async with _events(env, world.workspace) as second:
            resync = await second.until(lambda e: e["type"] == "resync")
        [mine] = [s for s in resync["sessions"] if s["container"] == name]
        assert mine["agent_state"] == "idle"

        waited: list[int] = []

        async def wait_exited() -> None:
            run = await world.run("wait", name, "--state", "exited", "--timeout", "60")
            waited.append(run.code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_exited)
            await anyio.sleep(1)
            assert waited == [], "not exited yet"
            await step("exit", "exited")
        assert waited == [0]
        assert events.agent(name)[-5:] == ["working", "waiting", "working", "idle", "exited"]

    # Both hooks of UserPromptSubmit ran; the settings keep the user's first, then coi's.
    assert await world.incus.lookup_file(name, USER_MARK) is not None
    settings = json.loads((await world.incus.pull_file(name, "/home/code/.claude/settings.json")).data)
    prompt = settings["hooks"]["UserPromptSubmit"]
    assert prompt[0] == user_hook
    assert RECORD in prompt[1]["hooks"][0]["command"]
    # Stopped: exited, at once.
    await world.incus.stop_instance(name, force=True)
    assert (await _top(env, world.workspace))[name]["agent_state"] == "exited"
    done = await world.run("wait", name, "--state", "exited", "--timeout", "10")
    assert done.code == 0, done.stderr


async def test_a_session_without_the_hosts_settings_still_reports_its_state(world: ShellWorld) -> None:
    (world.home / ".config" / "coi" / "config.toml").write_text(
        f'[defaults]\nimage = "{DEBIAN_IMAGE}"\nmount_claude_config = false\n'
    )
    started = await world.run("shell", "--background")
    assert started.code == 0, started.stderr
    name = world.container(1)
    done = await world.run("wait", name, "--state", "idle", "--timeout", "60")
    assert done.code == 0, done.stderr
    settings = json.loads((await world.incus.pull_file(name, "/home/code/.claude/settings.json")).data)
    assert set(settings) == {"hooks"}, "nothing of the host's"
    assert await world.incus.lookup_file(name, "/home/code/.claude/.credentials.json") is None


# What root writes at RECORD in each container, and the state `coi top` must show for it.
HOSTILE = {
    "good": ('printf \'{"state":"waiting","since":%s,"message":"ok"}\' "$(date +%s)" > "$R"', "waiting"),
    "link": ('printf \'{"state":"idle","since":1}\' > "$R.real" && ln -s "$R.real" "$R"', "unknown"),
    "huge": ("head -c 1048576 /dev/zero | tr '\\0' ' ' > \"$R\"", "unknown"),
    "garbage": ("printf '{not json' > \"$R\"", "unknown"),
    "badstate": ('printf \'{"state":"root-owned","since":1}\' > "$R"', "unknown"),
    "control": ('printf \'{"state":"idle","since":1,"message":"a\\\\u001b[2Jb\\\\nc"}\' > "$R"', "idle"),
    "directory": ('mkdir "$R"', "unknown"),
    "fifo": ('mkfifo "$R"', "unknown"),  # a GET of it would hang
    "empty": (': > "$R"', "unknown"),
    "nothing": ("true", "starting"),
}


@pytest.fixture
async def hostile(incus: IncusClient) -> AsyncIterator[dict[str, str]]:
    """Busybox containers named like claude sessions of one workspace, each with what HOSTILE
    says at RECORD; removed afterwards."""
    ws = secrets.token_hex(4)
    names = {kind: f"{PREFIX}{ws}-{slot}" for slot, kind in enumerate(HOSTILE, start=1)}
    config = {KEY_WORKSPACE: f"/tmp/h14a-ws-{ws}", KEY_TOOL: "claude"}
    try:
        async with anyio.create_task_group() as tg:
            for name in names.values():
                post = busybox(name, config={**config, KEY_SESSION: secrets.token_hex(8)})
                tg.start_soon(incus.create_instance, post)
        for kind, name in names.items():
            script = f"R={RECORD}; mkdir -p /home/code/.coi && {HOSTILE[kind][0]}"
            result = await incus.exec(name, ["sh", "-c", script])
            assert result.ok, result.stderr
        yield names
    finally:
        for name in names.values():
            await remove_instance(incus, name)


async def test_hostile_records_are_unknown_and_never_break_the_others(
    incus: IncusClient, home: Path, incus_project: str, hostile: dict[str, str]
) -> None:
    env = isolated_env(home=home, project=incus_project, prefix=PREFIX)
    with anyio.fail_after(60):
        rows = await _top(env)
    for kind, name in hostile.items():
        assert rows[name]["agent_state"] == HOSTILE[kind][1], kind
    assert rows[hostile["good"]]["agent_message"] == "ok"
    assert rows[hostile["control"]]["agent_message"] == "a [2Jb c"
    assert rows[hostile["huge"]]["agent_message"] == ""

    done = await coi("wait", hostile["good"], "--state", "waiting", "--timeout", "30", env=env)
    assert done.code == 0, done.stderr
    late = await coi(
        "wait", hostile["nothing"], hostile["good"], "--state", "waiting", "--timeout", "1", env=env
    )
    assert late.code == 1
    assert late.stderr.strip() == f"Timed out after 1s: {hostile['nothing']} not waiting"
    (await coi("wait", f"{PREFIX}nope-1", "--state", "idle", env=env)).one_error(2, f"{PREFIX}nope-1")
    bad = await coi("wait", hostile["good"], "--state", "working", env=env)
    assert bad.code == 2
    assert "Invalid value for '--state'" in bad.stderr

    async with _events(env) as events:
        resync = await events.until(lambda e: e["type"] == "resync")
        states = {s["container"]: s["agent_state"] for s in resync["sessions"]}
        assert {k: states[n] for k, n in hostile.items()} == {k: v[1] for k, v in HOSTILE.items()}
        # A change of one is told, with the state before it.
        script = (
            f'printf \'{{"state":"idle","since":%s}}\' "$(date +%s)" > {RECORD}.t && mv {RECORD}.t {RECORD}'
        )
        assert (await incus.exec(hostile["good"], ["sh", "-c", script])).ok
        change = await events.until(
            lambda e: e["type"] == "agent-state" and e["container"] == hostile["good"]
        )
        assert (change["previous"], change["state"]) == ("waiting", "idle")
        await incus.stop_instance(hostile["nothing"], force=True)
        gone = await events.until(
            lambda e: e["type"] == "agent-state" and e["container"] == hostile["nothing"]
        )
        assert (gone["previous"], gone["state"]) == ("starting", "exited")
        await remove_instance(incus, hostile["garbage"])
        deleted = await events.until(
            lambda e: e["type"] == "agent-state" and e["container"] == hostile["garbage"]
        )
        assert (deleted["previous"], deleted["state"]) == ("unknown", "exited")
        assert str(deleted["workspace"]).startswith("/tmp/h14a-ws-")
    done = await coi("wait", hostile["nothing"], "--state", "exited", "--timeout", "10", env=env)
    assert done.code == 0, done.stderr
