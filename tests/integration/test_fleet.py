"""`coi top`, `coi limit` and `coi events` on the real incusd, with busybox containers named like
sessions (prefix `h14-`)."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from coi_async.incus import IncusClient
from coi_async.naming import KEY_WORKSPACE
from tests.coi_cli import COI, coi, isolated_env
from tests.helpers import busybox, remove_instance

pytestmark = pytest.mark.incus

PREFIX = "h14-"


@pytest.fixture
def env(incus_project: str, home: Path) -> dict[str, str]:
    return isolated_env(home=home, project=incus_project, prefix=PREFIX)


@pytest.fixture
async def sessions(incus: IncusClient) -> AsyncIterator[list[str]]:
    """Two running containers named like sessions of one workspace; removed afterwards."""
    ws = secrets.token_hex(4)
    names = [f"{PREFIX}{ws}-{slot}" for slot in (1, 2)]
    for name in names:
        await incus.create_instance(busybox(name, config={KEY_WORKSPACE: f"/tmp/h14-ws-{ws}"}))
    try:
        yield names
    finally:
        for name in names:
            await remove_instance(incus, name)


async def test_top_once_shows_every_session_with_its_resources(
    env: dict[str, str], sessions: list[str]
) -> None:
    done = await coi("top", "--once", "--format", "json", env=env)
    assert done.code == 0, done.stderr
    rows = {r["container"]: r for r in json.loads(done.stdout)}
    assert sorted(rows) == sessions
    for row in rows.values():
        assert row["status"] == "Running"
        assert row["memory_bytes"] > 0
        assert row["cpu_percent"] is not None
        assert row["uptime_s"] >= 0
        assert row["workspace"].startswith("/tmp/h14-ws-")
        assert row["agent_state"] == "unknown"
    text = await coi("top", "--once", "--sort", "memory", env=env)
    assert text.code == 0, text.stderr
    assert text.stdout.splitlines()[0].split()[:4] == ["CONTAINER", "WORKSPACE", "TOOL", "STATE"]
    assert all(name in text.stdout for name in sessions)


async def test_limit_applies_live_and_top_shows_it(
    incus: IncusClient, env: dict[str, str], sessions: list[str]
) -> None:
    done = await coi("limit", sessions[0], "--cpu", "1", "--memory", "256MiB", env=env)
    assert done.code == 0, done.stderr
    assert done.stdout.strip() == f"Limited {sessions[0]}: cpu 1, memory 256MiB"
    instance = await incus.get_instance(sessions[0])
    assert (instance.config["limits.cpu"], instance.config["limits.memory"]) == ("1", "256MiB")
    shown = await coi("top", "--once", "--format", "json", env=env)
    row = next(r for r in json.loads(shown.stdout) if r["container"] == sessions[0])
    assert (row["cpu_limit"], row["memory_limit"]) == ("1", "256MiB")

    every = await coi("limit", "--all", "--memory", "none", env=env)
    assert every.code == 0, every.stderr
    assert sorted(every.stdout.splitlines()) == [f"Limited {n}: memory unlimited" for n in sessions]
    assert "limits.memory" not in (await incus.get_instance(sessions[0])).config


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["limit", "h14-nope-1", "--cpu", "1"], "unknown container 'h14-nope-1'"),
        (["limit", "h14-nope-1"], "nothing to change"),
        (["limit", "--all", "--cpu", "0"], "invalid --cpu '0'"),
        (["limit", "--all", "--memory", "lots"], "invalid --memory 'lots'"),
        (["limit", "--cpu", "1"], "no container names provided"),
        (["top", "--sort", "colour"], "Invalid value for '--sort'"),
        (["wait", "h14-nope-1", "--state", "idle", "--timeout", "0"], "invalid --timeout 0"),
        (["wait", "h14-nope-1", "--state", "asleep"], "Invalid value for '--state'"),
        (["wait", "h14-nope-1", "--state", "idle"], "unknown container 'h14-nope-1'"),
    ],
)
async def test_bad_input_is_one_line_and_changes_nothing(
    env: dict[str, str], args: list[str], message: str
) -> None:
    done = await coi(*args, env=env)
    assert done.code == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


async def test_events_start_with_a_resync_and_follow_stops_and_starts(
    incus: IncusClient, env: dict[str, str], sessions: list[str]
) -> None:
    process = await anyio.open_process(
        [COI, "events", "--format", "json"], env=env, stderr=subprocess.DEVNULL
    )
    seen: list[dict[str, Any]] = []
    buffer = b""
    try:
        assert process.stdout is not None

        async def until(check: str) -> None:
            nonlocal buffer
            while not any(e["type"] == check and e.get("container") in ("", None, sessions[1]) for e in seen):
                buffer += await process.stdout.receive()  # type: ignore[union-attr]
                *lines, buffer = buffer.split(b"\n")
                seen.extend(json.loads(line) for line in lines if line)

        with anyio.fail_after(30):
            await until("resync")
            resync = next(e for e in seen if e["type"] == "resync")
            listed = {s["container"] for s in resync["sessions"]}
            assert set(sessions) <= listed
            await incus.stop_instance(sessions[1], force=True)
            await until("instance-stopped")
            await incus.start_instance(sessions[1])
            await until("instance-started")
    finally:
        process.kill()
        await process.aclose()
    stopped = next(e for e in seen if e["type"] == "instance-stopped")
    assert stopped["container"] == sessions[1]
    assert str(stopped["workspace"]).startswith("/tmp/h14-ws-")
    assert stopped["slot"] == 2
