"""`coi run`, `coi list`, `coi info`, `coi persist` end to end, and race-free slots, on a real incusd."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from coi_async.errors import CoiError, NoFreeSlotError
from coi_async.incus import IncusClient
from coi_async.naming import SessionName, workspace_hash
from coi_async.orchestration.containers.ops import remove_quietly
from coi_async.orchestration.sessions.instance_spec import LaunchSpec
from coi_async.orchestration.sessions.launch import launch
from coi_async.orchestration.sessions.store import SessionMetadata, SessionStore, new_session_id
from tests.coi_cli import COI, Run, coi, isolated_env
from tests.helpers import BUSYBOX_IMAGE

pytestmark = pytest.mark.incus

PREFIX = "h3a-"


def cli_env(home: Path, project: str, **extra: str) -> dict[str, str]:
    """The environment of this module's coi runs: HOME `home`, Incus project `project`, busybox."""
    return isolated_env(
        home=home,
        project=project,
        prefix=PREFIX,
        drop=("COI_", "CLAUDE_ON_INCUS_", "INCUS_"),
        CLAUDE_ON_INCUS_IMAGE=BUSYBOX_IMAGE,
        **extra,
    )


async def left_behind(incus: IncusClient, workspace: Path) -> list[str]:
    h = workspace_hash(str(workspace))
    return [i.name for i in await incus.list_instances() if i.name.startswith(f"{PREFIX}{h}-")]


async def gone_soon(incus: IncusClient, workspace: Path, *, within_s: float = 20) -> bool:
    """Whether the workspace's containers are all gone within `within_s`: `coi run` returns
    while its container powers itself off, and incusd deletes it after."""
    with anyio.move_on_after(within_s):
        while await left_behind(incus, workspace):  # noqa: ASYNC110 - polling incusd
            await anyio.sleep(0.1)
        return True
    return False


@pytest.mark.parametrize("code", [0, 1, 42])
async def test_run_streams_exact_stdout_and_exit_code(
    incus: IncusClient, incus_project: str, home: Path, workspace: Path, code: int
) -> None:
    script = f"printf 'a  b\\n\\nc'; printf oops >&2; exit {code}"
    done = await coi("run", "--", "sh", "-c", script, env=cli_env(home, incus_project), cwd=workspace)
    assert done.out == b"a  b\n\nc"
    assert done.code == code, done.err
    assert b"oops" in done.err
    assert await gone_soon(incus, workspace)


@pytest.mark.parametrize("when", ["right after the command", "while the command runs"])
async def test_a_run_killed_with_sigkill_leaves_no_container(
    incus: IncusClient, incus_project: str, home: Path, workspace: Path, when: str
) -> None:
    script = "echo x; exit 3" if when == "right after the command" else "echo x; sleep 60"
    proc = await anyio.open_process(
        [COI, "run", "--", "sh", "-c", script],
        env=cli_env(home, incus_project),
        cwd=workspace,
        stderr=subprocess.PIPE,
    )
    first = b""
    try:
        assert proc.stdout is not None
        with anyio.fail_after(60), contextlib.suppress(anyio.EndOfStream):
            first = await proc.stdout.receive()
        if first:
            proc.kill()
        await proc.wait()
        assert proc.stderr is not None
        err = b"".join([chunk async for chunk in proc.stderr])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.aclose()
    assert first == b"x\n", err.decode(errors="replace")
    assert await gone_soon(incus, workspace)


async def test_workspace_files_belong_to_the_host_user_and_env_stays_out(
    incus: IncusClient, incus_project: str, home: Path, workspace: Path
) -> None:
    (workspace / "from-host").write_text("hi")
    script = "touch /workspace/made-inside && cat /workspace/from-host && echo && env"
    args = ("run", "-e", "PASSED=a,b=c", "--", "sh", "-c", script)
    done = await coi(
        *args,
        env=cli_env(home, incus_project, H3A_HOST_SECRET="do-not-leak"),
        cwd=workspace,
    )
    assert done.code == 0, done.err
    out = done.stdout
    assert out.startswith("hi\n")
    assert "PASSED=a,b=c\n" in out  # no comma splitting
    assert "H3A_HOST_SECRET" not in out
    assert "do-not-leak" not in out
    st = (workspace / "made-inside").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert await gone_soon(incus, workspace)


async def test_ctrl_c_removes_the_container(
    incus: IncusClient, incus_project: str, home: Path, workspace: Path
) -> None:
    proc = await anyio.open_process(
        [COI, "run", "--", "sleep", "60"],
        env=cli_env(home, incus_project),
        cwd=workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with anyio.fail_after(60):
            while not await left_behind(incus, workspace):  # noqa: ASYNC110 - polling incusd
                await anyio.sleep(0.1)
            await anyio.sleep(1.0)  # let the exec start
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(60):
            rc = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert rc == 130
    assert await left_behind(incus, workspace) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "--slot", "0", "--", "true"], 2, "invalid slot 0"),
        (["run", "--slot", "-1", "--", "true"], 2, "invalid slot -1"),
        (["run", "--slot", "11", "--", "true"], 2, "must be between 1 and 10"),
        (["run", "-w", "not-there", "--", "true"], 2, "does not exist"),
        (["run", "-w", "afile", "--", "true"], 2, "is not a directory"),
        (["run", "--image", "h3a-no-such-image", "--", "true"], 1, "image 'h3a-no-such-image' not found"),
        (["run", "--mount", "/tmp:/data", "--mount", "/tmp:/data/x", "--", "true"], 2, "nested mount paths"),
        (["run", "--mount", "nocolon", "--", "true"], 2, "expected HOST:CONTAINER"),
        (["run", "-e", "NOEQUALS", "--", "true"], 2, "expected KEY=VALUE"),
        (["list", "--format", "xml"], 2, "invalid format 'xml'"),
        (["info", "../../etc"], 1, "session not found: ../../etc"),
        (["info", "1b4e28ba-2fa1-41d2-883f-0016d3cca427"], 1, "session not found"),
    ],
)
async def test_bad_input_is_one_line_and_creates_nothing(
    incus: IncusClient,
    incus_project: str,
    home: Path,
    workspace: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    (workspace / "afile").write_text("x")
    done = await coi(*args, env=cli_env(home, incus_project), cwd=workspace)
    err = done.stderr
    assert done.code == code, err
    assert message in err
    assert err.count("Error:") == 1
    assert "Traceback" not in err
    assert await left_behind(incus, workspace) == []


async def test_malformed_config_names_file_and_key(incus_project: str, home: Path, workspace: Path) -> None:
    cfg = home / ".config" / "coi"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text("[defaults]\nimgae = 'x'\n")
    done = await coi("run", "--", "true", env=cli_env(home, incus_project), cwd=workspace)
    assert done.code == 2
    assert done.stderr.strip() == "Error: ~/.config/coi/config.toml: unknown key 'defaults.imgae'"


def spec(workspace: Path, **kw: object) -> LaunchSpec:
    base: dict[str, object] = {
        "workspace": str(workspace),
        "image": BUSYBOX_IMAGE,
        "prefix": PREFIX,
        "host_uid": os.getuid(),
        "host_gid": os.getgid(),
    }
    base.update(kw)
    return LaunchSpec(**base)  # type: ignore[arg-type]


@pytest.fixture
async def cleanup(incus: IncusClient, workspace: Path) -> AsyncIterator[None]:
    yield
    with anyio.move_on_after(120, shield=True):
        async with anyio.create_task_group() as tg:
            for name in await left_behind(incus, workspace):
                tg.start_soon(remove_quietly, incus, name)


async def test_ten_concurrent_launches_get_ten_distinct_slots(
    incus: IncusClient, workspace: Path, cleanup: None
) -> None:
    got: list[int] = []

    async def one() -> None:
        got.append((await launch(incus, spec(workspace))).slot)

    with anyio.fail_after(240):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
    assert sorted(got) == list(range(1, 11))
    names = await left_behind(incus, workspace)
    assert sorted(SessionName.parse(n, PREFIX).slot for n in names) == list(range(1, 11))  # type: ignore[union-attr]
    with pytest.raises(NoFreeSlotError, match="all 10 slots are in use"):
        await launch(incus, spec(workspace))


async def test_stopped_persistent_container_is_reused_by_its_slot(
    incus: IncusClient, workspace: Path, cleanup: None
) -> None:
    first = await launch(incus, spec(workspace, persistent=True, max_slots=3))
    second = await launch(incus, spec(workspace, persistent=True, max_slots=3))
    assert (first.slot, second.slot) == (1, 2)
    await incus.stop_instance(first.name, force=True)
    again = await launch(incus, spec(workspace, persistent=True, max_slots=3))
    assert again.slot == 1
    assert again.reused
    # An explicit slot in use by a running container is refused for run...
    with pytest.raises(CoiError, match="slot 2 is in use by running container"):
        await launch(incus, spec(workspace, slot=2, max_slots=3))
    # ... and moves on for shell.
    moved = await launch(incus, spec(workspace, slot=2, max_slots=3, next_if_busy=True))
    assert moved.slot == 3


async def test_list_info_persist(
    incus: IncusClient, incus_project: str, home: Path, workspace: Path, cleanup: None
) -> None:
    launched = await launch(incus, spec(workspace, ephemeral=True))
    store = SessionStore(home / ".coi" / "sessions-claude")
    sid = new_session_id()
    store.save_metadata(
        SessionMetadata(
            session_id=sid,
            container_name=launched.name,
            workspace=str(workspace),
            saved_at="2026-01-31T12:00:00Z",
        )
    )
    (store.session_dir(sid) / ".claude").mkdir()
    (store.session_dir(sid) / ".claude" / "x").write_bytes(b"x" * 2048)

    async def run(*args: str) -> Run:
        return await coi(*args, env=cli_env(home, incus_project), cwd=workspace)

    done = await run("list", "--all", "--format", "json")
    assert done.code == 0, done.err
    doc = json.loads(done.out)
    assert list(doc) == ["active_containers", "saved_sessions"]
    [mine] = [c for c in doc["active_containers"] if c["name"] == launched.name]
    assert list(mine) == ["created_at", "image", "ipv4", "name", "persistent", "status", "tool", "workspace"]
    assert mine["tool"] == "claude"
    assert (mine["persistent"], mine["status"], mine["workspace"]) == (False, "Running", str(workspace))
    assert doc["saved_sessions"] == [
        {"ID": sid, "SavedAt": "2026-01-31T12:00:00Z", "Tool": "claude", "Workspace": str(workspace)}
    ]

    text = (await run("list", "--all")).stdout
    assert text.startswith("Active Containers:\n------------------\n")
    assert f"  {launched.name} (ephemeral)\n    Status: Running\n" in text
    assert f"\nSaved Sessions:\n---------------\n  {sid}\n    Saved: 2026-01-31T12:00:00Z\n" in text

    done = await run("persist", launched.name)
    assert done.code == 0, done.err
    assert done.stdout == (
        f"Persisting container {launched.name}...\n  ✓ Persisted {launched.name}\n\nPersisted 1 container(s)\n"
    )
    meta = store.load_metadata(sid)
    assert meta is not None
    assert meta.persistent
    inst = await incus.get_instance(launched.name)
    assert not inst.ephemeral
    assert inst.config["user.coi.persistent"] == "true"
    doc = json.loads((await run("list", "--format", "json")).out)
    assert "saved_sessions" not in doc
    assert [c["persistent"] for c in doc["active_containers"] if c["name"] == launched.name] == [True]

    done = await run("info")
    assert done.code == 0, done.err
    out = done.stdout
    assert f"Session ID:     {sid}\n" in out
    assert "Session Data:   ✓ Present (.claude directory)\nData Size:      2.0 KB\n" in out
    assert f"Resume:         coi shell --resume={sid}" in out

    done = await run("persist", f"{PREFIX}nope-1")
    assert done.code == 1
    assert "failed to persist specified containers" in done.stderr
