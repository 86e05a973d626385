"""The host boundary against the agent inside a real container: the workspace config it writes is
not trusted, the files and output it makes coi read are bounded, what coi keeps under ~/.coi is
private, and a name cannot reach another API endpoint."""

from __future__ import annotations

import resource
import stat
import time
from pathlib import Path

import pytest

from coi_async.errors import ReadLimitError
from coi_async.incus import IncusClient
from coi_async.orchestration.sessions.credentials import CONTAINER_SETTINGS_MAX_BYTES
from tests.coi_cli import Run, coi, isolated_env
from tests.helpers import BUSYBOX_IMAGE
from tests.integration.shell_harness import ShellWorld

pytestmark = [pytest.mark.incus, pytest.mark.timeout(240)]

PREFIX = "h12b-"
GIB = 1024**3


@pytest.fixture
def box_name(unique: str) -> str:
    return f"{PREFIX}{unique}"


@pytest.fixture
def shell_prefix() -> str:
    return PREFIX


def warnings(result: Run) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Warning:")]


async def test_agent_written_config_mounts_nothing_until_trusted(
    incus: IncusClient, incus_project: str, home: Path, workspace: Path
) -> None:
    ws = workspace
    (home / "secret").write_text("the host user's")
    env = isolated_env(
        home=home,
        project=incus_project,
        prefix=PREFIX,
        drop=("COI_", "CLAUDE_ON_INCUS_", "INCUS_"),
        CLAUDE_ON_INCUS_IMAGE=BUSYBOX_IMAGE,
    )

    async def inside(*argv: str) -> Run:
        return await coi("run", "--", *argv, env=env, cwd=ws)

    # The agent, root in its container, plants a config that mounts the host user's home.
    lines = ("[[mounts.default]]", 'host = "~"', 'container = "/mnt/hosthome"')
    planted = await inside("sh", "-c", 'printf "%s\\n" "$@" > /workspace/.coi.toml', "sh", *lines)
    assert planted.code == 0, planted.stderr
    assert (ws / ".coi.toml").read_text() == "\n".join(lines) + "\n"

    ignored = await inside("cat", "/mnt/hosthome/secret")
    assert ignored.code != 0
    assert "the host user's" not in ignored.stdout
    (warning,) = warnings(ignored)
    assert f"ignoring mounts.default from {ws}/.coi.toml: it is not trusted" in warning
    assert "run 'coi trust'" in warning

    assert (await coi("trust", env=env, cwd=ws)).code == 0
    trusted = await inside("cat", "/mnt/hosthome/secret")
    assert (trusted.code, trusted.stdout, warnings(trusted)) == (0, "the host user's", [])

    # Through its (now trusted) mount the agent edits the file again: trusted no more.
    edited = await inside("sh", "-c", "echo '# harmless, surely' >> /workspace/.coi.toml")
    assert edited.code == 0, edited.stderr
    again = await inside("cat", "/mnt/hosthome/secret")
    assert again.code != 0
    (warning,) = warnings(again)
    assert "it changed since 'coi trust'" in warning
    listed = await coi("trust", "--list", env=env, cwd=ws)
    assert listed.stdout.rstrip().endswith("  changed")


def _private_tree(root: Path) -> list[str]:
    """Everything under `root` that another host user could read or change: directories must be
    0700 and files at most 0700 (the saved data keeps only the owner's bits of its modes)."""
    wrong = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if (path.is_dir() and mode != 0o700) or mode & 0o7077:
            wrong.append(f"{path}: {mode:o}")
    return wrong


async def test_oversized_settings_in_the_container_are_not_read_and_the_store_is_private(
    world: ShellWorld, incus: IncusClient
) -> None:
    first = await world.run("shell", "--persistent", "--background")
    assert first.code == 0, first.stderr
    name = world.container(1)
    # The agent makes both settings files 2 GiB (sparse: no disk is used) and the session ends.
    grow = "truncate -s 2G /home/code/.claude/settings.json /home/code/.claude.json"
    grown = await incus.exec(name, ["sh", "-c", grow])
    assert grown.ok, grown
    await incus.stop_instance(name, force=True)

    started = time.monotonic()
    again = await world.run("shell", "--persistent", "--background")
    took = time.monotonic() - started
    assert again.code == 0, again.stderr
    assert "Restarting existing persistent container" in again.stderr
    limit = CONTAINER_SETTINGS_MAX_BYTES
    for shown in ("~/.claude/settings.json", "~/.claude.json"):
        assert (
            f"[setup] Warning: the session's {shown} is larger than {limit} bytes; not read, "
            "left as it is without the host's settings"
        ) in again.stderr
    # Read no further than the bound: the coi processes stayed far below the file's size.
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 < GIB / 2
    assert took < 60
    # Left as they were; the credentials came in all the same.
    sizes = await incus.exec(
        name, ["stat", "-c", "%s", "/home/code/.claude/settings.json", "/home/code/.claude.json"]
    )
    assert sizes.stdout.split() == [b"2147483648", b"2147483648"]
    creds = await incus.pull_file(name, "/home/code/.claude/.credentials.json")
    assert b"test-token" in creds.data

    # Everything a save makes under ~/.coi (saved data, metadata) is private. (Small files again:
    # the save's own caps are another test's business.)
    shrink = "echo '{}' | tee /home/code/.claude/settings.json > /home/code/.claude.json"
    assert (await incus.exec(name, ["sh", "-c", shrink])).ok
    done = await world.run("shutdown", "--all", "--force")
    assert done.code == 0, done.stderr
    # (Two sessions: each start of the persistent container is one.)
    assert any((session / ".claude").is_dir() for session in world.saved_sessions())
    assert _private_tree(world.home / ".coi") == []


async def test_reads_into_memory_stop_at_their_bound(incus: IncusClient, box: str) -> None:
    assert (await incus.exec(box, ["truncate", "-s", "2G", "/tmp/big"])).ok
    started = time.monotonic()
    with pytest.raises(ReadLimitError, match=r"/tmp/big in .* is larger than 1048576 bytes"):
        await incus.pull_file(box, "/tmp/big", max_bytes=1024 * 1024)
    with pytest.raises(ReadLimitError, match=r"cat in .* printed more than 1048576 bytes"):
        await incus.exec(box, ["cat", "/tmp/big"], max_output_bytes=1024 * 1024)
    assert time.monotonic() - started < 30
    # Below the bound both read whole, and the client is as good as before.
    assert (await incus.exec(box, ["sh", "-c", "head -c 1000 /dev/zero > /tmp/small"])).ok
    assert len((await incus.pull_file(box, "/tmp/small", max_bytes=1000)).data) == 1000
    assert (await incus.exec(box, ["echo", "still here"])).stdout == b"still here\n"


async def test_dot_names_are_refused_by_the_cli(incus: IncusClient, incus_project: str, box: str) -> None:
    before = sorted(i.name for i in await incus.list_instances())
    env = isolated_env(home=Path("/nonexistent"), project=incus_project, prefix=PREFIX)
    for args in (
        ("container", "delete", "..", "--force"),
        ("container", "stop", "."),
        ("file", "pull", "..:/etc/passwd", "/tmp/x"),
    ):
        (await coi(*args, env=env)).one_error(2, "invalid instance name")
    assert sorted(i.name for i in await incus.list_instances()) == before
    assert box in before
