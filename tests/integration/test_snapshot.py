"""`coi snapshot create|list|restore|delete` end to end, against the real incusd.

Containers are busybox ones named `h15s-...`; the "session" one is named like coi's sessions
(`h15s-<hash8>-1`, with COI_CONTAINER_PREFIX=h15s-), carries its session id in `user.coi.session`
and has session data in /home/code/.claude, as the bulk lifecycle tests make them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import pytest

from coi_async.incus import IncusClient
from coi_async.naming import KEY_SESSION
from coi_async.orchestration.containers import snapshots
from tests.coi_cli import coi, isolated_env
from tests.helpers import busybox, remove_instance
from tests.integration.shell_harness import ShellWorld, finish, killing, talk

pytestmark = pytest.mark.incus

PREFIX = "h15s-"
CLAUDE = "/home/code/.claude"


@pytest.fixture
def env(incus_project: str, home: Path) -> dict[str, str]:
    """A coi run in the test session's project, with its own HOME and coi's names (`h15s-`)."""
    return isolated_env(home=home, project=incus_project, prefix=PREFIX)


@pytest.fixture
async def box(incus: IncusClient) -> AsyncIterator[str]:
    """A running busybox container that is no coi session; removed afterwards."""
    name = f"{PREFIX}box-{secrets.token_hex(3)}"
    await incus.create_instance(busybox(name))
    try:
        yield name
    finally:
        await remove_instance(incus, name)


async def sh(incus: IncusClient, name: str, script: str, *, stdin: bytes = b"") -> str:
    result = await incus.exec(name, ["sh", "-c", script], stdin=stdin)
    assert result.ok, result.stderr
    return result.stdout.decode()


async def code_sh(incus: IncusClient, name: str, script: str) -> str:
    """`sh` as the session's user (uid 1000, HOME /home/code)."""
    result = await incus.exec(name, ["sh", "-c", script], user=1000, group=1000, env={"HOME": "/home/code"})
    assert result.ok, result.stderr
    return result.stdout.decode()


async def snapshot_names(incus: IncusClient, name: str) -> list[str]:
    return [s.name for s in await incus.list_instance_snapshots(name)]


async def test_create_change_restore_brings_the_snapshot_back(
    incus: IncusClient, box: str, env: dict[str, str]
) -> None:
    await sh(incus, box, "echo before > /root/file")

    created = await coi("snapshot", "create", box, "before-change", env=env)
    assert created.code == 0, created.stderr
    assert created.stdout == f"Created snapshot before-change of {box}\n"

    await sh(incus, box, "echo after > /root/file && touch /root/new")
    restored = await coi("snapshot", "restore", box, "before-change", env=env)

    assert restored.code == 0, restored.stderr
    assert restored.stdout == f"Restored snapshot before-change of {box}\n"
    assert restored.stderr.splitlines() == [
        f"Stopping {box} (gracefully, up to 60s)...",
        f"Restoring snapshot before-change of {box}...",
        f"Starting {box} again...",
    ]
    assert (await incus.get_instance(box)).running
    assert await sh(incus, box, "cat /root/file; ls /root") == "before\nfile\n"
    assert await snapshot_names(incus, box) == ["before-change"]


async def test_a_stopped_container_is_restored_and_left_stopped(
    incus: IncusClient, box: str, env: dict[str, str]
) -> None:
    await sh(incus, box, "echo before > /root/file")
    assert (await coi("snapshot", "create", box, "s1", env=env)).code == 0
    await sh(incus, box, "echo after > /root/file")
    await incus.stop_instance(box, force=True)

    restored = await coi("snapshot", "restore", box, "s1", env=env)

    assert restored.code == 0, restored.stderr
    assert restored.stderr.splitlines() == [f"Restoring snapshot s1 of {box}..."]
    assert (await incus.get_instance(box)).status == "Stopped"
    await incus.start_instance(box)
    assert await sh(incus, box, "cat /root/file") == "before\n"


async def test_list_shows_name_creation_age_and_size(
    incus: IncusClient, box: str, env: dict[str, str]
) -> None:
    assert (await coi("snapshot", "list", box, env=env)).stdout == f"No snapshots of {box}\n"
    assert (await coi("snapshot", "list", box, "--format", "json", env=env)).stdout == "[]\n"
    first = await coi("snapshot", "create", box, env=env)
    assert first.code == 0, first.stderr
    default = re.fullmatch(rf"Created snapshot (snap-\d{{8}}-\d{{6}}) of {box}\n", first.stdout)
    assert default is not None, first.stdout
    assert (await coi("snapshot", "create", box, "second.one_2", env=env)).code == 0

    text = await coi("snapshot", "list", box, env=env)

    assert text.code == 0, text.stderr
    header, *rows = text.stdout.splitlines()
    assert header.split() == ["NAME", "CREATED", "AGE", "SIZE"]
    assert [row.split()[0] for row in rows] == [default[1], "second.one_2"]
    for row in rows:
        _name, day, clock, age, size = row.split()
        dt.datetime.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S")
        assert re.fullmatch(r"\d+[smhd]", age), row
        assert size == "-" or re.fullmatch(r"\d+(\.\d)?[KMGTPE]?B", size), row

    doc = json.loads((await coi("snapshot", "list", box, "--format", "json", env=env)).out)
    assert [sorted(item) for item in doc] == [["created_at", "name", "size_bytes"]] * 2
    assert [item["name"] for item in doc] == [default[1], "second.one_2"]
    for item in doc:
        assert dt.datetime.fromisoformat(item["created_at"]).tzinfo is not None
        assert item["size_bytes"] is None or isinstance(item["size_bytes"], int)


async def test_default_names_of_the_same_second_do_not_collide(incus: IncusClient, box: str) -> None:
    now = dt.datetime(2026, 1, 31, 12, 0, 5)
    first = await snapshots.create_snapshot(incus, box, now=now)
    second = await snapshots.create_snapshot(incus, box, now=now)

    assert (first, second) == ("snap-20260131-120005", "snap-20260131-120005-2")
    assert await snapshot_names(incus, box) == [first, second]


async def test_delete_removes_the_snapshot(incus: IncusClient, box: str, env: dict[str, str]) -> None:
    await incus.create_instance_snapshot(box, "keep")
    await incus.create_instance_snapshot(box, "drop")

    deleted = await coi("snapshot", "delete", box, "drop", env=env)

    assert deleted.code == 0, deleted.stderr
    assert deleted.stdout == f"Deleted snapshot drop of {box}\n"
    assert await snapshot_names(incus, box) == ["keep"]
    again = await coi("snapshot", "delete", box, "drop", env=env)
    again.one_error(2, f"unknown snapshot 'drop' of container '{box}'")


async def test_bad_input_is_one_line_and_changes_nothing(
    incus: IncusClient, box: str, env: dict[str, str]
) -> None:
    await incus.create_instance_snapshot(box, "s1")
    # incusd itself takes names coi would not give a new snapshot: such a one can still be deleted.
    lax = "x" * 70
    await incus.create_instance_snapshot(box, lax)
    await sh(incus, box, "echo now > /root/file")
    ghost = f"{PREFIX}ghost-{secrets.token_hex(3)}"

    for args, code, fragment in [
        (("create", ghost), 2, f"unknown container '{ghost}'"),
        (("create", ghost, "s2"), 2, f"unknown container '{ghost}'"),
        (("list", ghost), 2, f"unknown container '{ghost}'"),
        (("list", ghost, "--format", "json"), 2, f"unknown container '{ghost}'"),
        (("restore", ghost, "s1"), 2, f"unknown container '{ghost}'"),
        (("delete", ghost, "s1"), 2, f"unknown container '{ghost}'"),
        (("restore", box, "nope"), 2, f"unknown snapshot 'nope' of container '{box}'"),
        (("delete", box, "nope"), 2, f"unknown snapshot 'nope' of container '{box}'"),
        (("create", box, "s1"), 1, f"snapshot 's1' of container '{box}' already exists"),
        (("create", box, "a/b"), 2, "invalid snapshot name 'a/b'"),
        (("create", box, "has space"), 2, "invalid snapshot name 'has space'"),
        (("create", box, "x" * 64), 2, "invalid snapshot name"),
        (("create", box, ".."), 2, "invalid snapshot name '..'"),
        (("create", box, ".hidden"), 2, "invalid snapshot name '.hidden'"),
        (("create", box, "snäp"), 2, "invalid snapshot name 'snäp'"),
        (("restore", box, "a/b"), 2, "invalid snapshot name 'a/b'"),
        (("delete", box, ".."), 2, "invalid snapshot name '..'"),
        (("delete", box, ""), 2, "invalid snapshot name ''"),
        (("restore", box, "s1", "--timeout", "0"), 2, "Invalid value for '--timeout'"),
        (("list", box, "--format", "yaml"), 2, "Invalid value for '--format'"),
        (("create",), 2, "Missing argument 'CONTAINER'"),
        (("delete", box), 2, "Missing argument 'NAME'"),
    ]:
        run = await coi("snapshot", *args, env=env)
        run.one_error(code, fragment)
        assert run.stdout == "", (args, run.stdout)

    assert await snapshot_names(incus, box) == ["s1", lax]
    assert (await incus.get_instance(box)).running
    assert await sh(incus, box, "cat /root/file") == "now\n"
    deleted = await coi("snapshot", "delete", box, lax, env=env)
    assert deleted.code == 0, deleted.stderr
    assert await snapshot_names(incus, box) == ["s1"]


async def test_a_running_ephemeral_container_is_not_stopped_for_a_restore(
    incus: IncusClient, env: dict[str, str]
) -> None:
    name = f"{PREFIX}eph-{secrets.token_hex(3)}"
    await incus.create_instance(msgspec.structs.replace(busybox(name), ephemeral=True))
    try:
        await incus.create_instance_snapshot(name, "s1")
        run = await coi("snapshot", "restore", name, "s1", env=env)
        run.one_error(1, f"container '{name}' is ephemeral", f"coi persist {name}")
        assert (await incus.get_instance(name)).running
    finally:
        await remove_instance(incus, name)


async def test_restoring_a_running_session_saves_its_data_first_and_starts_it_again(
    incus: IncusClient, home: Path, env: dict[str, str]
) -> None:
    name = f"{PREFIX}{secrets.token_hex(4)}-1"
    session_id = str(uuid.uuid4())
    await incus.create_instance(busybox(name, config={KEY_SESSION: session_id}))
    data = f"{CLAUDE}/projects/-workspace/{session_id}.jsonl"
    try:
        await sh(
            incus,
            name,
            f"mkdir -p {CLAUDE}/projects/-workspace && cat > {data} && chown -R 1000:1000 {CLAUDE}",
            stdin=b"turn 1\n",
        )
        assert (await coi("snapshot", "create", name, "turn1", env=env)).code == 0
        await sh(incus, name, f"echo 'turn 2' >> {data}")

        run = await coi("snapshot", "restore", name, "turn1", env=env)

        assert run.code == 0, run.stderr
        assert run.stdout == f"Restored snapshot turn1 of {name}\n"
        store = home / ".coi" / "sessions-claude" / session_id
        assert run.stderr.splitlines() == [
            f"Saving the session data of {name}...",
            f"Session data saved to {store}",
            f"Stopping {name} (gracefully, up to 60s)...",
            f"Restoring snapshot turn1 of {name}...",
            f"Starting {name} again...",
        ]
        # What the session had written before the restore is kept in the store ...
        saved = store / ".claude" / "projects" / "-workspace" / f"{session_id}.jsonl"
        assert saved.read_text() == "turn 1\nturn 2\n"
        assert json.loads((store / "metadata.json").read_text())["container_name"] == name
        # ... and the container runs again, as it was at the snapshot.
        assert (await incus.get_instance(name)).running
        assert await sh(incus, name, f"cat {data}") == "turn 1\n"
    finally:
        await remove_instance(incus, name)


@pytest.fixture
def shell_prefix() -> str:
    return PREFIX


async def test_restoring_a_background_shell_saves_the_session_and_runs_it_again(world: ShellWorld) -> None:
    started = await world.run("shell", "--background")
    assert started.code == 0, started.stderr
    name = world.container(1)
    notes = f"{CLAUDE}/projects/-workspace/h15s-notes.jsonl"
    await code_sh(world.incus, name, f"mkdir -p {CLAUDE}/projects/-workspace && echo one > {notes}")
    assert (await world.run("snapshot", "create", name, "before")).code == 0
    await code_sh(world.incus, name, f"echo two >> {notes}")

    run = await world.run("snapshot", "restore", name, "before", "--timeout", "30")

    assert run.code == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0] == f"Saving the session data of {name}..."
    assert lines[1].startswith("Session data saved to ")
    assert lines[2:] == [
        f"Stopping {name} (gracefully, up to 30s)...",
        f"Restoring snapshot before of {name}...",
        f"Starting {name} again...",
    ]
    [session] = world.saved_sessions()
    assert str(session) == lines[1].removeprefix("Session data saved to ")
    saved = session / ".claude" / "projects" / "-workspace" / "h15s-notes.jsonl"
    assert saved.read_text() == "one\ntwo\n"
    instance = await world.instance(1)
    assert instance is not None
    assert instance.running
    assert await code_sh(world.incus, name, f"cat {notes}") == "one\n"


async def test_a_terminal_attached_during_a_restore_leaves_the_container_to_it(world: ShellWorld) -> None:
    with killing(world.spawn("shell")) as child:
        await anyio.to_thread.run_sync(talk, child, "hello")
        name = world.container(1)
        assert (await world.run("snapshot", "create", name, "before")).code == 0
        run = await world.run("snapshot", "restore", name, "before", "--timeout", "30")
        assert run.code == 0, run.stderr
        # The stop ended the terminal's tmux; its coi saved the session and kept the container.
        await anyio.to_thread.run_sync(finish, child)
    instance = await world.instance(1)
    assert instance is not None
    assert instance.running
    assert "user.coi.restoring" not in instance.config
