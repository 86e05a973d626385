"""Saving and restoring session data (~/.claude) against real busybox instances."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from coi_async.incus import IncusClient
from coi_async.orchestration.sessions.archive import StatePlace, restore_session_data, save_session_data

pytestmark = pytest.mark.incus

HOME = "/home/code"


@pytest.fixture
def box_name(unique: str) -> str:
    return f"h3a-{unique}"


async def sh(incus: IncusClient, name: str, script: str) -> str:
    result = await incus.exec(name, ["sh", "-c", script])
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()


SEED = (
    "mkdir -p /home/code/.claude/projects/-workspace && cd /home/code/.claude && "
    "echo '{\"a\":1}' > settings.json && echo line > projects/-workspace/conv-1.jsonl && "
    "ln -s settings.json link && chmod 600 settings.json && chown -R 1000:1000 /home/code/.claude"
)


async def test_save_from_running_then_again_replaces(incus: IncusClient, box: str, tmp_path: Path) -> None:
    await sh(incus, box, SEED)
    out = await save_session_data(incus, StatePlace(box, HOME), tmp_path)
    assert out.saved
    assert out.method == "exec"
    data = tmp_path / ".claude"
    assert (data / "settings.json").read_text() == '{"a":1}\n'
    assert (data / "projects/-workspace/conv-1.jsonl").read_text() == "line\n"
    assert os.readlink(data / "link") == "settings.json"
    assert (data / "settings.json").stat().st_mode & 0o777 == 0o600
    await sh(
        incus,
        box,
        "rm /home/code/.claude/projects/-workspace/conv-1.jsonl && echo x > /home/code/.claude/new",
    )
    out = await save_session_data(incus, StatePlace(box, HOME), tmp_path, running=True)
    assert out.saved
    assert (data / "new").read_text() == "x\n"
    assert not (data / "projects/-workspace/conv-1.jsonl").exists()
    assert sorted(os.listdir(tmp_path)) == [".claude"]  # no staging left


async def test_save_from_stopped_container(incus: IncusClient, box: str, tmp_path: Path) -> None:
    await sh(incus, box, SEED)
    await incus.stop_instance(box, force=True)
    out = await save_session_data(incus, StatePlace(box, HOME), tmp_path)
    assert out.saved
    assert out.method == "files"
    assert out.skipped == ("link",)  # the files API cannot show a link as a link
    data = tmp_path / ".claude"
    assert (data / "settings.json").read_text() == '{"a":1}\n'
    assert (data / "projects/-workspace/conv-1.jsonl").read_text() == "line\n"
    assert (data / "settings.json").stat().st_mode & 0o777 == 0o600


async def test_missing_directory_keeps_the_old_copy(incus: IncusClient, box: str, tmp_path: Path) -> None:
    old = tmp_path / ".claude"
    old.mkdir()
    (old / "keep").write_text("good")
    await sh(incus, box, "rm -rf /home/code/.claude")
    out = await save_session_data(incus, StatePlace(box, HOME), tmp_path)
    assert out.missing
    assert not out.saved
    assert (old / "keep").read_text() == "good"


async def test_interrupted_save_keeps_the_previous_copy(incus: IncusClient, box: str, tmp_path: Path) -> None:
    old = tmp_path / ".claude"
    old.mkdir()
    (old / "keep").write_text("good")
    await sh(
        incus,
        box,
        "mkdir -p /home/code/.claude/d && cd /home/code/.claude/d && for i in $(seq 1 300); do echo $i > f$i; done",
    )
    await incus.stop_instance(box, force=True)  # the files-API walk: many requests, easy to interrupt

    async def cancel_when_staging_fills(scope: anyio.CancelScope) -> None:
        while True:
            staged = [p for p in tmp_path.iterdir() if p.name.startswith(".claude.new-")]
            if staged and any(staged[0].rglob("f*")):
                scope.cancel()
                return
            await anyio.sleep(0.002)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_when_staging_fills, scope)
                await save_session_data(incus, StatePlace(box, HOME), tmp_path)
                pytest.fail("the save was expected to be cancelled")
            tg.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert sorted(os.listdir(tmp_path)) == [".claude"]
    assert (old / "keep").read_text() == "good"
    # And the next save goes through.
    out = await save_session_data(incus, StatePlace(box, HOME), tmp_path)
    assert out.saved
    assert len(list((old / "d").iterdir())) == 300


async def test_restore_into_running_and_stopped(incus: IncusClient, box: str, tmp_path: Path) -> None:
    data = tmp_path / ".claude" / "projects" / "-workspace"
    data.mkdir(parents=True)
    (data / "c.jsonl").write_text("conv\n")
    (tmp_path / ".claude" / "settings.json").write_text("{}")
    await sh(incus, box, "rm -rf /home/code/.claude")
    assert await restore_session_data(incus, StatePlace(box, HOME), tmp_path, 1000)
    listing = await sh(
        incus,
        box,
        "cd /home/code && find .claude | sort && stat -c '%u:%g %n' .claude .claude/projects/-workspace/c.jsonl",
    )
    assert ".claude/projects/-workspace/c.jsonl" in listing
    assert "1000:1000 .claude\n" in listing
    assert "1000:1000 .claude/projects/-workspace/c.jsonl" in listing

    await sh(incus, box, "rm -rf /home/code/.claude")
    await incus.stop_instance(box, force=True)
    assert await restore_session_data(incus, StatePlace(box, HOME), tmp_path, 1000)
    await incus.start_instance(box)
    listing = await sh(
        incus,
        box,
        "stat -c '%u:%g %n' /home/code/.claude /home/code/.claude/projects/-workspace/c.jsonl && cat /home/code/.claude/projects/-workspace/c.jsonl",
    )
    assert (
        listing
        == "1000:1000 /home/code/.claude\n1000:1000 /home/code/.claude/projects/-workspace/c.jsonl\nconv\n"
    )
    assert not await restore_session_data(incus, StatePlace(box, HOME), tmp_path / "nothing", 1000)
