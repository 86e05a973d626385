"""`coi shutdown`, `coi kill`, `coi clean` end to end, against the real incusd.

Each test gets a project of its own (`h4-<hex>`), because `--all` acts on every coi container of
the project. Containers are busybox ones named like coi's (`h4-<hash8>-<slot>`), each with some
session data in /home/code/.claude and its session id stamped in `user.coi.session`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from coi_async.errors import CoiError, NotFoundError
from coi_async.incus import IncusClient
from coi_async.naming import KEY_SESSION
from tests.coi_cli import COI, coi, isolated_env
from tests.helpers import busybox, throwaway_project

pytestmark = pytest.mark.incus

PREFIX = "h4-"


@pytest.fixture
async def project(incus_socket: str) -> AsyncIterator[str]:
    async with throwaway_project("h4-", description="coi-async bulk lifecycle test; safe to delete") as name:
        yield name


@pytest.fixture
def env(project: str, home: Path) -> dict[str, str]:
    """The environment of a coi run: the test's project, its own HOME, coi's names (`h4-`)."""
    return isolated_env(home=home, project=project, prefix=PREFIX)


@pytest.fixture
async def client(project: str) -> AsyncIterator[IncusClient]:
    async with IncusClient.connect(project=project) as c:
        yield c


def container_names(n: int) -> list[str]:
    stem = secrets.token_hex(4)
    return [f"{PREFIX}{stem}-{i}" for i in range(1, n + 1)]


async def make_containers(
    incus: IncusClient,
    names: list[str],
    *,
    ignore_stop: set[str] | frozenset[str] = frozenset(),
    data_bytes: int = 2048,
    start: bool = True,
) -> dict[str, str]:
    """Create the containers with session data; returns container -> session id."""
    sessions = {name: str(uuid.uuid4()) for name in names}

    async def one(name: str) -> None:
        config = {KEY_SESSION: sessions[name]}
        if name in ignore_stop:
            config["environment.COI_IGNORE_STOP"] = "1"
        await incus.create_instance(busybox(name, start=True, config=config))
        # By exec into the running container: the files API on a stopped one fails for seconds
        # at a time on a loaded incusd ("forkfile.sock: no such file or directory").
        claude = "/home/code/.claude"
        script = (
            f"mkdir -p {claude}/projects/-workspace"
            f" && printf '{{\"x\": 1}}\\n' > {claude}/settings.json"
            f" && cat > {claude}/projects/-workspace/{sessions[name]}.jsonl"
            f" && chown -R 1000:1000 {claude}"
        )
        result = await incus.exec(
            name, ["sh", "-c", script], stdin=name.encode() + b"\n" + os.urandom(data_bytes)
        )
        assert result.ok, result.stderr
        if not start:
            await incus.stop_instance(name, force=True)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)
    return sessions


def saved_data(home: Path, session_id: str) -> Path:
    return (
        home
        / ".coi"
        / "sessions-claude"
        / session_id
        / ".claude"
        / "projects"
        / "-workspace"
        / f"{session_id}.jsonl"
    )


def assert_saved(home: Path, name: str, session_id: str) -> None:
    data = saved_data(home, session_id)
    assert data.is_file(), f"no session data saved for {name}"
    assert data.read_bytes().startswith(name.encode() + b"\n")
    meta = json.loads((home / ".coi" / "sessions-claude" / session_id / "metadata.json").read_text())
    assert meta["container_name"] == name
    assert meta["saved_at"]


async def remaining(incus: IncusClient) -> dict[str, str]:
    return {i.name: i.status for i in await incus.list_instances()}


async def assert_all_gone_and_saved(incus: IncusClient, home: Path, sessions: dict[str, str]) -> None:
    """No instance is left, and every container's session (container -> session id) was saved."""
    assert await remaining(incus) == {}
    for name, session_id in sessions.items():
        assert_saved(home, name, session_id)


async def test_shutdown_all_saves_every_session_and_leaves_none(
    client: IncusClient, home: Path, env: dict[str, str]
) -> None:
    names = container_names(8)
    sessions = await make_containers(client, names)

    result = await coi("shutdown", "--all", "--force", "--timeout", "20", "--format", "json", env=env)

    assert result.code == 0, result.stderr
    doc = json.loads(result.out)
    assert sorted(r["name"] for r in doc["results"]) == sorted(names)
    assert all(r["outcome"] == "ok" and r["error"] is None for r in doc["results"])
    assert all(isinstance(r["duration_s"], float) for r in doc["results"])
    await assert_all_gone_and_saved(client, home, sessions)


async def test_ignoring_container_is_forced_after_its_timeout_others_finish_early(
    client: IncusClient, home: Path, env: dict[str, str]
) -> None:
    names = container_names(4)
    stubborn = names[0]
    await make_containers(client, names, ignore_stop={stubborn})

    start = time.monotonic()
    result = await coi("shutdown", *names, "--force", "--timeout", "4", env=env)
    elapsed = time.monotonic() - start

    out = result.stdout
    assert result.code == 0, result.stderr
    assert await remaining(client) == {}
    blocks = {b.splitlines()[0]: b for b in out.split("Shutting down container ")[1:]}
    stubborn_block = next(b for first, b in blocks.items() if first.startswith(stubborn))
    assert "  Attempting graceful shutdown..." in stubborn_block
    assert "  Timeout reached, force-killing..." in stubborn_block
    assert f"  ✓ Shutdown {stubborn}" in stubborn_block
    for name in names[1:]:
        block = next(b for first, b in blocks.items() if first.startswith(name))
        assert "  Graceful shutdown successful" in block
    # The polite ones finished before the stubborn one's timeout: their blocks come first.
    assert out.index(f"✓ Shutdown {stubborn}") > max(out.index(f"✓ Shutdown {n}") for n in names[1:])
    assert "\nShutdown 4 container(s)" in out
    assert elapsed < 4 + 8


async def test_unknown_name_is_reported_and_the_rest_proceed(
    client: IncusClient, home: Path, env: dict[str, str]
) -> None:
    names = container_names(2)
    sessions = await make_containers(client, names)
    ghost = f"{PREFIX}00000000-9"

    result = await coi("kill", names[0], ghost, names[1], "--force", env=env)

    err = result.stderr
    assert result.code == 1
    assert f"Warning: Container {ghost} does not exist" in err
    assert err.strip().splitlines()[-1].startswith("Error: failed to kill specified containers")
    assert ghost in err.strip().splitlines()[-1]
    assert await remaining(client) == {}
    for name in names:
        assert f"  ✓ Killed {name}" in result.stdout
        assert_saved(home, name, sessions[name])


async def test_bad_input_touches_nothing(client: IncusClient, home: Path, env: dict[str, str]) -> None:
    names = container_names(1)
    await make_containers(client, names)
    for args in (
        ["shutdown", names[0], "--timeout", "0"],
        ["shutdown", names[0], "--timeout", "-3"],
        ["kill", names[0], "--parallel", "0"],
        ["kill", "--all", names[0]],
        ["shutdown"],
    ):
        result = await coi(*args, env=env)
        assert result.code == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, lines)
        assert lines[0].startswith("Error: "), (args, lines)
    result = await coi("kill", f"{PREFIX}00000000-1", "--force", env=env)
    assert result.code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: no such container")
    assert await remaining(client) == {names[0]: "Running"}


async def test_sigint_mid_shutdown_leaves_each_untouched_or_done_and_a_rerun_finishes(
    client: IncusClient, home: Path, env: dict[str, str]
) -> None:
    names = container_names(8)
    # Enough data that saving takes a while, so the run is caught with items in every phase.
    sessions = await make_containers(client, names, data_bytes=4 * 1024 * 1024)
    args = ["shutdown", "--all", "--force", "--timeout", "30", "--parallel", "1"]
    # Driven by hand (a signal mid-run), so a plain Popen.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [COI, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Interrupt as soon as the first session is saved: that container is then being shut
        # down, the next one is saving, the rest wait for a slot.
        store = home / ".coi" / "sessions-claude"
        with anyio.fail_after(60):
            # Polling a directory: there is nothing to wait on.
            while not any(store.glob("*/metadata.json")) and proc.poll() is None:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        rest, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert b"Interrupted:" in rest

    left = await remaining(client)
    assert 0 < len(left) < len(names), left  # caught in the middle
    for name in names:
        if name in left:
            assert left[name] == "Running", (
                f"{name} was touched: {left[name]}\n{rest.decode()}\n{err.decode()}"
            )
        else:
            assert_saved(home, name, sessions[name])

    again = await coi(*args[:-2], env=env)
    assert again.code == 0, again.stderr
    await assert_all_gone_and_saved(client, home, sessions)


async def test_clean_saves_and_deletes_stopped_then_sessions(
    client: IncusClient, home: Path, env: dict[str, str]
) -> None:
    stopped = container_names(2)
    running = container_names(1)
    sessions = await make_containers(client, stopped, start=False)
    await make_containers(client, running)

    result = await coi("clean", "--force", env=env)

    out = result.stdout
    assert result.code == 0, result.stderr
    assert "Found 2 stopped container(s):" in out
    for name in stopped:
        assert f"Deleting container {name}..." in out
        assert_saved(home, name, sessions[name])
    assert "\n✓ Cleaned 2 item(s)" in out
    assert await remaining(client) == {running[0]: "Running"}

    result = await coi("clean", "--sessions", "--force", env=env)
    assert result.code == 0, result.stderr
    assert "Found 2 session(s):" in result.stdout
    assert not any((home / ".coi" / "sessions-claude").iterdir())

    result = await coi("clean", "--sessions", env=env)
    assert "  (no saved sessions found)" in result.stdout
    assert "Nothing to clean." in result.stdout


async def test_already_gone_counts_as_done(project: str, client: IncusClient) -> None:
    from coi_async.orchestration.containers import ops

    names = container_names(1)
    await make_containers(client, names)
    await ops.force_stop(client, names[0])
    await ops.force_stop(client, names[0])  # already stopped: fine
    await ops.delete(client, names[0])
    await ops.delete(client, names[0])  # gone: fine
    with pytest.raises(NotFoundError):
        await client.get_instance(names[0])
    assert isinstance(NotFoundError(404, "x"), CoiError)
