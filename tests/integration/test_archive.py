"""Saving and restoring session data (~/.claude) against real busybox instances."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from coi_async.config.model import Limits
from coi_async.errors import ArchiveLimitError
from coi_async.incus import IncusClient
from coi_async.orchestration.files.limits import copy_caps
from coi_async.orchestration.sessions.archive import StatePlace, restore_session_data, save_session_data
from coi_async.untar import Caps

pytestmark = pytest.mark.incus

HOME = "/home/code"
CAPS = copy_caps(Limits())


@pytest.fixture
def box_name(unique: str) -> str:
    return f"h3a-{unique}"


async def sh(incus: IncusClient, name: str, script: str) -> str:
    result = await incus.exec(name, ["sh", "-c", script])
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()


def old_copy(session_dir: Path) -> Path:
    """A previous saved copy in `session_dir`, which a failed save must leave as it is."""
    old = session_dir / ".claude"
    old.mkdir()
    (old / "keep").write_text("good")
    return old


async def make_files(incus: IncusClient, name: str, count: int) -> None:
    script = f"mkdir -p {HOME}/.claude/d && cd {HOME}/.claude/d && for i in $(seq 1 {count}); do echo $i > f$i; done"
    await sh(incus, name, script)


SEED = (
    "mkdir -p /home/code/.claude/projects/-workspace && cd /home/code/.claude && "
    "echo '{\"a\":1}' > settings.json && echo line > projects/-workspace/conv-1.jsonl && "
    "ln -s settings.json link && chmod 600 settings.json && chown -R 1000:1000 /home/code/.claude"
)


async def test_save_from_running_then_again_replaces(incus: IncusClient, box: str, tmp_path: Path) -> None:
    await sh(incus, box, SEED)
    out = await save_session_data(incus, StatePlace(box, HOME), tmp_path, caps=CAPS)
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
    out = await save_session_data(incus, StatePlace(box, HOME), tmp_path, caps=CAPS, running=True)
    assert out.saved
    assert (data / "new").read_text() == "x\n"
    assert not (data / "projects/-workspace/conv-1.jsonl").exists()
    assert sorted(os.listdir(tmp_path)) == [".claude"]  # no staging left


async def test_save_from_stopped_container(incus: IncusClient, box: str, tmp_path: Path) -> None:
    await sh(incus, box, SEED)
    await incus.stop_instance(box, force=True)
    out = await save_session_data(incus, StatePlace(box, HOME), tmp_path, caps=CAPS)
    assert out.saved
    assert out.method == "files"
    assert out.skipped == ("link",)  # the files API cannot show a link as a link
    data = tmp_path / ".claude"
    assert (data / "settings.json").read_text() == '{"a":1}\n'
    assert (data / "projects/-workspace/conv-1.jsonl").read_text() == "line\n"
    assert (data / "settings.json").stat().st_mode & 0o777 == 0o600


async def test_missing_directory_keeps_the_old_copy(incus: IncusClient, box: str, tmp_path: Path) -> None:
    old = old_copy(tmp_path)
    await sh(incus, box, "rm -rf /home/code/.claude")
    out = await save_session_data(incus, StatePlace(box, HOME), tmp_path, caps=CAPS)
    assert out.missing
    assert not out.saved
    assert (old / "keep").read_text() == "good"


async def test_interrupted_save_keeps_the_previous_copy(incus: IncusClient, box: str, tmp_path: Path) -> None:
    old = old_copy(tmp_path)
    await make_files(incus, box, 300)
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
                await save_session_data(incus, StatePlace(box, HOME), tmp_path, caps=CAPS)
                pytest.fail("the save was expected to be cancelled")
            tg.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert sorted(os.listdir(tmp_path)) == [".claude"]
    assert (old / "keep").read_text() == "good"
    # And the next save goes through.
    out = await save_session_data(incus, StatePlace(box, HOME), tmp_path, caps=CAPS)
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


@pytest.mark.parametrize(
    ("caps", "message"),
    [
        (Caps(max_members=10, max_file_bytes=1 << 20, max_total_bytes=1 << 20), "more than 10 entries"),
        (Caps(max_members=1000, max_file_bytes=4096, max_total_bytes=1 << 20), "big is larger than 4 KiB"),
        (Caps(max_members=1000, max_file_bytes=1 << 20, max_total_bytes=4096), "more than 4 KiB in all"),
    ],
    ids=["entries", "one-file", "all-files"],
)
async def test_a_stopped_containers_copy_is_bounded_too(
    incus: IncusClient, box: str, tmp_path: Path, caps: Caps, message: str
) -> None:
    old = old_copy(tmp_path)
    await make_files(incus, box, 30)
    await sh(incus, box, "head -c 5000 /dev/zero > /home/code/.claude/big")
    await incus.stop_instance(box, force=True)  # the files-API walk
    with pytest.raises(ArchiveLimitError, match=message):
        await save_session_data(incus, StatePlace(box, HOME), tmp_path, caps=caps)
    assert sorted(os.listdir(tmp_path)) == [".claude"]
    assert (old / "keep").read_text() == "good"
