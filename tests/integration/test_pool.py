"""The warm pool (`[pool] size`) on a `dir` storage pool of the test's own: `coi shell` and `coi
run` take a made-ahead member (renamed to the slot's name), the pool is refilled in the
background, concurrent launches never share a member, members are no sessions, bad config is
one line.

The module makes its own `dir` storage pool and a project whose own default profile puts root
disks there (no NIC), and removes both at the end, also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator

import anyio
import pytest

from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance, Profile
from coi_async.orchestration.pool.members import KEY_POOL, as_member, list_members
from tests.helpers import DEBIAN_IMAGE, delete_project_fully, require_image
from tests.integration.shell_harness import ShellWorld

pytestmark = [pytest.mark.incus, pytest.mark.timeout(420)]

PREFIX = "pl7-"


@pytest.fixture(scope="module")
async def incus_project(incus_socket: str) -> AsyncIterator[str]:
    """A throwaway project on a throwaway `dir` storage pool (overrides the suite's project)."""
    tag = secrets.token_hex(3)
    storage, project = f"coipool-{tag}", f"coi-pooltest-{tag}"
    async with IncusClient.connect() as client:
        await client.create_storage_pool(storage, "dir")
        try:
            await client.create_project(
                project,
                config={"features.images": "false", "features.profiles": "true"},
                description="coi-async pool test; safe to delete",
            )
            scoped = client.in_project(project)
            await scoped.update_profile(
                Profile(name="default", devices={"root": {"type": "disk", "path": "/", "pool": storage}})
            )
            await require_image(scoped, DEBIAN_IMAGE)
            yield project
        finally:
            with anyio.move_on_after(300, shield=True):
                with contextlib.suppress(CoiError):
                    await delete_project_fully(client, project)
                with contextlib.suppress(CoiError):
                    await client.delete_storage_pool(storage)


@pytest.fixture
def shell_prefix() -> str:
    return PREFIX


@pytest.fixture
def shell_config() -> str:
    return "[pool]\nsize = 2\n"


@pytest.fixture
async def pool_world(world: ShellWorld) -> AsyncIterator[ShellWorld]:
    """`world` whose pool is full (2 members) at the start and drained at the end (after any
    refill still running: the drain waits for the filler's lock)."""
    (world.workspace / "marker").write_text("from the host\n")
    try:
        filled = await world.run("pool", "fill")
        assert filled.code == 0, filled.stderr
        assert len(await ready(world)) == 2
        yield world
    finally:
        with anyio.move_on_after(300, shield=True):
            await world.run("pool", "drain")


async def members(world: ShellWorld) -> list[Instance]:
    return await list_members(world.incus, PREFIX)


async def ready(world: ShellWorld) -> list[Instance]:
    return [m for m in await members(world) if as_member(m).ready]


async def refilled(world: ShellWorld, size: int = 2) -> list[Instance]:
    """The members once the background refill has made the pool whole again."""
    with anyio.fail_after(240):
        while True:
            found = await members(world)
            if len(found) == size and all(as_member(m).ready for m in found):
                return found
            await anyio.sleep(0.5)


async def has_tmux(world: ShellWorld, name: str) -> bool:
    result = await world.incus.exec(
        name, ["tmux", "has-session", "-t", f"coi-{name}"], env={"HOME": "/home/code"}, user=1000, group=1000
    )
    return result.ok


async def test_shell_takes_a_member_and_the_pool_is_refilled(pool_world: ShellWorld) -> None:
    world = pool_world
    before = {m.config["volatile.uuid"]: m.name for m in await ready(world)}

    done = await world.run("shell", "--background")
    assert done.code == 0, done.stderr
    session = await world.instance(1)
    assert session is not None
    assert session.running
    # The slot's container is one of the members, renamed: the same instance (its uuid).
    assert session.config["volatile.uuid"] in before
    assert not any(k.startswith(KEY_POOL) for k in session.config), session.config
    assert session.config["user.coi.workspace"] == str(world.workspace)
    assert session.config["user.coi.slot"] == "1"
    assert session.expanded_devices["workspace"]["source"] == str(world.workspace)
    assert not [d for d in session.expanded_devices.values() if d.get("type") == "nic"]
    # It works as a fresh one would: the workspace mounted for the code user, tmux up.
    cat = await world.incus.exec(
        session.name, ["cat", "/workspace/marker"], env={"HOME": "/home/code"}, user=1000, group=1000
    )
    assert cat.stdout == b"from the host\n", cat
    assert await has_tmux(world, session.name)

    # Refilled in the background, back to 2, without the member taken.
    after = await refilled(world)
    assert before[session.config["volatile.uuid"]] not in {m.name for m in after}

    # Members are no sessions: not in `coi list`, not touched by `coi shutdown --all`.
    listed = await world.run("list", "--format", "json")
    assert listed.code == 0, listed.stderr
    names = {m.name for m in after}
    assert [c["name"] for c in json.loads(listed.stdout)["active_containers"]] == [world.container(1)]
    text = await world.run("list")
    assert not any(name in text.stdout for name in names), text.stdout
    down = await world.run("shutdown", "--all")
    assert down.code == 0, down.stderr
    assert {m.name for m in await ready(world)} == names


async def test_run_takes_a_member_too(pool_world: ShellWorld) -> None:
    world = pool_world
    names = {m.name for m in await ready(world)}
    done = await world.run("run", "--", "cat", "/workspace/marker")
    assert done.code == 0, done.stderr
    assert done.stdout == "from the host\n"
    left = {m.name for m in await members(world)}
    assert len(names - left) == 1, "one member was taken"
    await refilled(world)


async def test_concurrent_shells_never_take_the_same_member(pool_world: ShellWorld) -> None:
    world = pool_world
    before = {m.config["volatile.uuid"] for m in await ready(world)}
    codes: list[int] = []

    async def one() -> None:
        done = await world.run("shell", "--background")
        codes.append(done.code)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    assert codes == [0, 0, 0]
    sessions = await world.ours()
    assert sorted(s.name for s in sessions) == [world.container(n) for n in (1, 2, 3)]
    uuids = [s.config["volatile.uuid"] for s in sessions]
    assert len(set(uuids)) == 3
    # Two members for three shells: each member went to one shell, the third was created.
    assert len(set(uuids) & before) == 2
    for s in sessions:
        assert await has_tmux(world, s.name)
    await refilled(world)


async def test_status_drain_and_auto(pool_world: ShellWorld) -> None:
    world = pool_world
    shown = await world.run("pool", "status", "--format", "json")
    assert shown.code == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["size"] == 2
    assert body["driver"] == "dir"
    assert len(body["members"]) == 2
    assert all(m["ready"] for m in body["members"])

    drained = await world.run("pool", "drain")
    assert drained.code == 0, drained.stderr
    assert "Removed 2 pool members" in drained.stdout
    assert await members(world) == []

    # "auto" on a `dir` pool keeps members; 0 keeps none, and a shell then creates as before.
    (world.home / ".config" / "coi" / "config.toml").write_text(
        f'[defaults]\nimage = "{DEBIAN_IMAGE}"\n[pool]\nsize = "auto"\n'
    )
    auto = json.loads((await world.run("pool", "status", "--format", "json")).stdout)
    assert (auto["size"], auto["setting"]) == (2, "auto")
    (world.home / ".config" / "coi" / "config.toml").write_text(
        f'[defaults]\nimage = "{DEBIAN_IMAGE}"\n[pool]\nsize = 0\n'
    )
    done = await world.run("shell", "--background")
    assert done.code == 0, done.stderr
    await anyio.sleep(2)
    assert await members(world) == [], "size 0: no refill"


@pytest.mark.parametrize("value", ["-1", "17", '"big"', "true", "1.5"])
async def test_bad_pool_config_is_one_line(world: ShellWorld, value: str) -> None:
    (world.home / ".config" / "coi" / "config.toml").write_text(
        f'[defaults]\nimage = "{DEBIAN_IMAGE}"\n[pool]\nsize = {value}\n'
    )
    done = await world.run("shell", "--background")
    done.one_error(2, "pool.size")
    assert await world.ours() == []
