"""Bad input to `coi shell` / `coi attach`: one clear error line, the right exit code, nothing made,
nothing lost. Plus the less travelled flags (--tmux=false, --debug, -e, --mount)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from coi_async.incus.models import InstanceSource, InstancesPost
from tests.coi_cli import Run
from tests.helpers import BUSYBOX_IMAGE
from tests.integration.shell_harness import ShellWorld, finish, killing

pytestmark = [pytest.mark.incus, pytest.mark.timeout(180)]


@pytest.fixture
def shell_config() -> str:
    return "max_slots = 2\n"


def _save_foreign_session(world: ShellWorld) -> str:
    session_id = str(uuid.uuid4())
    path = world.sessions / session_id
    (path / ".claude" / "projects" / "-workspace").mkdir(parents=True)
    meta = {"session_id": session_id, "container_name": "h3b-00000000-1", "persistent": False}
    meta["workspace"] = "/somewhere/else"
    meta["saved_at"] = "2026-01-31T12:00:00.123456Z"
    (path / "metadata.json").write_text(json.dumps(meta, indent=2))
    return session_id


def _one_error(run: Run, expected_code: int, *fragments: str) -> None:
    """Exactly one `Error:` line, the last one (progress lines may come before it)."""
    lines = run.stderr.strip().splitlines()
    assert run.code == expected_code, run.stderr
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == lines[-1:], lines
    assert "Traceback" not in run.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["abc"], 2, "unexpected argument 'abc' - did you mean --resume=abc? (note: use = when"),
        ([f"--resume={uuid.UUID(int=7)}"], 1, "not found - check available sessions with: coi list --all"),
        (["--resume=../../etc"], 1, "session '../../etc' not found"),
        (["--resume"], 1, "no previous session to resume for this workspace"),
        (["--slot", "-1"], 2, "invalid slot -1: must be between 1 and 2"),
        (["--slot", "3"], 2, "invalid slot 3: must be between 1 and 2"),
        (["--image", "no-such-image"], 1, "image 'no-such-image' not found"),
        (["--mount", "/tmp/h3b-a:/data", "--mount", "/tmp/h3b-b:/data/x"], 2, "nested mount paths detected"),
        (["--mount", "nocolon"], 2, "invalid mount format 'nocolon': expected HOST:CONTAINER"),
        (["-w", "notes.txt"], 2, "is not a directory"),
        (["-e", "NOEQUALS"], 2, "expected KEY=VALUE"),
    ],
)
async def test_bad_input_is_one_line_and_makes_nothing(
    world: ShellWorld, args: list[str], code: int, fragment: str
) -> None:
    (world.workspace / "notes.txt").write_text("not a workspace")
    _one_error(await world.run("shell", *args), code, fragment)
    assert await world.ours() == []
    assert world.saved_sessions() == []


async def test_plain_coi_with_shell_flags_runs_shell(world: ShellWorld) -> None:
    _one_error(await world.run("--slot", "5"), 2, "invalid slot 5: must be between 1 and 2")
    _one_error(await world.run("--resume=abc"), 1, "session 'abc' not found")


async def test_foreign_session_is_refused(world: ShellWorld) -> None:
    session_id = _save_foreign_session(world)
    _one_error(
        await world.run("shell", f"--resume={session_id}"),
        1,
        f"session '{session_id}' belongs to workspace /somewhere/else",
    )
    assert await world.ours() == []
    assert (world.sessions / session_id / "metadata.json").is_file(), "nothing lost"


async def test_all_slots_taken(world: ShellWorld) -> None:
    for slot in (1, 2):
        await world.incus.create_instance(
            InstancesPost(
                name=world.container(slot), source=InstanceSource(type="image", alias=BUSYBOX_IMAGE)
            )
        )
    _one_error(await world.run("shell"), 1, "all 2 slots are in use")
    assert sorted(i.name for i in await world.ours()) == [world.container(1), world.container(2)]
    assert world.saved_sessions() == []


async def test_attach_errors_and_listing(world: ShellWorld) -> None:
    listing = await world.run("attach")
    assert (listing.code, listing.stdout.strip()) == (0, "No active sessions"), listing.stderr
    _one_error(
        await world.run("attach", "--slot", "1"),
        1,
        f"container {world.container(1)} not found or not running",
    )
    _one_error(await world.run("attach", "h3b-nope"), 1, "container h3b-nope not found or not running")


async def test_direct_mode_debug_env_and_mount(world: ShellWorld, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "marker").write_text("from the host")
    # --debug runs bash instead of the tool; --tmux=false runs it without tmux.
    args = ["shell", "--tmux=false", "--debug", "-e", "GREETING=a,b=c", "--mount", f"{extra}:/data"]
    for _attempt in range(3):
        with killing(world.spawn(*args)) as child:
            child.expect("Mode: Direct \\(no tmux\\)")
            if child.expect([r"\$ ", "lost track of the command"]) == 1:
                # incusd's "Failed to retrieve PID of executing child process" on a loaded
                # host: coi says so, cleans up, and does not run the command twice.
                child.expect("Container kept running")
                assert finish(child) == 0
                continue
            child.sendline('echo "[$GREETING] [$TMUX] $(cat /data/marker) $(id -u) $PWD"')
            child.expect(r"\[a,b=c\] \[\] from the host 1000 /workspace")
            child.sendline("exit")
            # Like `exit` from bash in tmux: the container runs on, for `coi attach`.
            child.expect("Container kept running")
            assert finish(child) == 0
            break
    else:
        pytest.fail("incusd lost the exec three times")
    assert all(i.running for i in await world.ours())
