"""`coi container ...` end to end: the real CLI against the real incusd, in the test project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coi_async.incus import IncusClient
from tests.coi_cli import coi
from tests.helpers import BUSYBOX_IMAGE, remove_instance

pytestmark = pytest.mark.incus


@pytest.fixture
def box_name(unique: str) -> str:
    return f"h5-{unique}-box"


async def test_launch_start_stop_delete(incus: IncusClient, incus_project: str, unique: str) -> None:
    name = f"h5-{unique}-life"
    try:
        run = await coi("container", "launch", BUSYBOX_IMAGE, name, project=incus_project)
        assert run.code == 0, run.stderr
        assert run.stderr == f"Container {name} launched from {BUSYBOX_IMAGE}\n"
        assert run.stdout == ""
        instance = await incus.get_instance(name)
        assert instance.running
        assert not instance.ephemeral
        # Docker nesting is configured from creation on, not after boot.
        assert instance.config["security.nesting"] == "true"
        assert instance.config["security.syscalls.intercept.mknod"] == "true"
        assert instance.config["security.syscalls.intercept.setxattr"] == "true"
        assert (await coi("container", "exists", name, project=incus_project)).code == 0
        assert (await coi("container", "running", name, project=incus_project)).code == 0

        dup = await coi("container", "launch", BUSYBOX_IMAGE, name, project=incus_project)
        dup.one_error(1, f"container '{name}' already exists")
        (await coi("container", "start", name, project=incus_project)).one_error(1, "already running")
        (await coi("container", "delete", name, project=incus_project)).one_error(1, "is running")

        stop = await coi("container", "stop", name, project=incus_project)
        assert (stop.code, stop.stderr) == (0, f"Container {name} stopped\n")
        (await coi("container", "stop", name, project=incus_project)).one_error(1, "already stopped")
        assert (await coi("container", "running", name, project=incus_project)).code == 1
        assert (await coi("container", "exists", name, project=incus_project)).code == 0

        start = await coi("container", "start", name, project=incus_project)
        assert (start.code, start.stderr) == (0, f"Container {name} started\n")
        forced = await coi("container", "stop", "--force", name, project=incus_project)
        assert forced.code == 0
        await incus.start_instance(name)
        delete = await coi("container", "delete", "--force", name, project=incus_project)
        assert (delete.code, delete.stderr) == (0, f"Container {name} deleted\n")
        assert not await incus.instance_exists(name)
        assert (await coi("container", "exists", name, project=incus_project)).code == 1
    finally:
        await remove_instance(incus, name)


async def test_launch_ephemeral_and_unknown_image(
    incus: IncusClient, incus_project: str, unique: str
) -> None:
    name = f"h5-{unique}-eph"
    try:
        run = await coi("container", "launch", "--ephemeral", BUSYBOX_IMAGE, name, project=incus_project)
        assert run.code == 0, run.stderr
        assert (await incus.get_instance(name)).ephemeral
        assert (await coi("container", "stop", name, project=incus_project)).code == 0
        assert not await incus.instance_exists(name)  # an ephemeral container goes when it stops

        missing = await coi("container", "launch", f"h5-{unique}-no-image", name, project=incus_project)
        missing.one_error(1, f"image 'h5-{unique}-no-image' not found")
        assert not await incus.instance_exists(name)
    finally:
        await remove_instance(incus, name)


async def test_unknown_container_is_one_error_line(incus_project: str, unique: str) -> None:
    name = f"h5-{unique}-ghost"
    for args in (
        ("start", name),
        ("stop", name),
        ("stop", "--force", name),
        ("delete", name),
        ("delete", "--force", name),
        ("exec", name, "--", "true"),
        ("exec", name, "--capture", "--", "true"),
        ("mount", name, "disk", "/tmp", "/mnt/x"),
    ):
        run = await coi("container", *args, project=incus_project)
        run.one_error(1, f"container '{name}' not found")
    assert (await coi("container", "exists", name, project=incus_project)).code == 1
    assert (await coi("container", "running", name, project=incus_project)).code == 1


async def test_usage_errors_exit_2_without_usage_dump(incus_project: str, box: str) -> None:
    cases = [
        (("launch", BUSYBOX_IMAGE), "Missing argument 'NAME'"),
        (("start",), "Missing argument 'NAME'"),
        (("exec", box), "Missing argument 'COMMAND...'"),
        (("exec", box, "--format", "raw", "--", "true"), "--format flag requires --capture flag"),
        (("exec", box, "--capture", "--format", "xml", "--", "true"), "invalid format 'xml'"),
        (("exec", box, "--env", "NOEQUALS", "--", "true"), "invalid environment variable 'NOEQUALS'"),
        (("exec", box, "--user", "abc", "--", "true"), "'abc' is not a valid integer"),
        (("stop", "--bogus", box), "No such option '--bogus'"),
        (("mount", box, "d", "/tmp"), "Missing argument 'PATH'"),
        (("mount", box, "d", "/tmp", "relative"), "container path must be absolute"),
        (("nope",), "No such command 'nope'"),
    ]
    for args, fragment in cases:
        run = await coi("container", *args, project=incus_project)
        run.one_error(2, fragment)
        assert "Usage:" not in run.stderr


async def test_exec_streams_and_exit_codes(incus_project: str, box: str) -> None:
    script = "printf 'out\\n'; printf 'err\\n' >&2; exit 3"
    plain = await coi("container", "exec", box, "--", "sh", "-c", script, project=incus_project)
    assert plain.code == 1
    assert plain.stdout == ""  # the command's output is chatter: stderr
    lines = plain.stderr.splitlines()
    assert sorted(lines[:2]) == ["err", "out"]  # two streams: their order is not defined
    assert lines[2:] == ["Error: command failed: exit status 3"]

    ok = await coi("container", "exec", box, "--", "sh", "-c", "echo fine", project=incus_project)
    assert (ok.code, ok.stdout, ok.stderr) == (0, "", "fine\n")

    captured = await coi(
        "container", "exec", box, "--capture", "--", "sh", "-c", script, project=incus_project
    )
    assert captured.code == 0
    assert captured.stdout.endswith("\n")
    # Keys in order, and the command's real stderr (the reference put "exit status N" there).
    assert captured.stdout.strip() == '{"exit_code":3,"stderr":"err\\n","stdout":"out\\n"}'
    assert json.loads(captured.stdout) == {"exit_code": 3, "stderr": "err\n", "stdout": "out\n"}

    raw = await coi(
        "container", "exec", box, "--capture", "--format=raw", "--",
        "sh", "-c", "printf 'a\\000b\\377'; printf 'noise' >&2; exit 5",
        project=incus_project,
    )  # fmt: skip
    assert raw.code == 5
    assert raw.out == b"a\x00b\xff"
    assert raw.err == b"noise"


async def test_exec_user_group_env_cwd(incus_project: str, box: str) -> None:
    run = await coi(
        "container", "exec", box, "--user", "1000", "--env", "A=one two", "--env", "B=x=y",
        "--cwd", "/home/code", "--capture", "--format", "raw", "--",
        "sh", "-c", 'echo "$(id -u):$(id -g) $A|$B $(pwd)"',
        project=incus_project,
    )  # fmt: skip
    assert (run.code, run.stdout) == (0, "1000:1000 one two|x=y /home/code\n")
    grouped = await coi(
        "container", "exec", box, "--user", "1000", "--group", "0", "--capture", "--format", "raw",
        "--", "sh", "-c", 'echo "$(id -u):$(id -g) $(pwd)"',
        project=incus_project,
    )  # fmt: skip
    assert grouped.stdout == "1000:0 /workspace\n"  # --cwd defaults to /workspace
    root = await coi(
        "container", "exec", box, "--capture", "--format", "raw", "--", "id", "-u", project=incus_project
    )
    assert root.stdout == "0\n"


async def test_exec_in_stopped_container(incus: IncusClient, incus_project: str, box: str) -> None:
    await incus.stop_instance(box, force=True)
    run = await coi("container", "exec", box, "--", "true", project=incus_project)
    run.one_error(1, f"container '{box}' is not running")


async def test_mount(incus: IncusClient, incus_project: str, box: str, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("from the host")
    run = await coi("container", "mount", box, "data", str(tmp_path), "/mnt/data", project=incus_project)
    assert (run.code, run.stderr) == (0, f"Disk mounted: {tmp_path} -> {box}:/mnt/data\n")
    device = (await incus.get_instance(box)).devices["data"]
    assert device == {"type": "disk", "source": str(tmp_path), "path": "/mnt/data", "shift": "true"}
    seen = await incus.exec(box, ["cat", "/mnt/data/hello.txt"])
    assert seen.stdout == b"from the host"

    again = await coi("container", "mount", box, "data", str(tmp_path), "/mnt/other", project=incus_project)
    again.one_error(1, "already has a device named 'data'")
    assert (await incus.get_instance(box)).devices["data"]["path"] == "/mnt/data"  # unchanged

    missing = await coi(
        "container", "mount", box, "gone", str(tmp_path / "nope"), "/mnt/gone", project=incus_project
    )
    missing.one_error(1, "source does not exist")
    assert "gone" not in (await incus.get_instance(box)).devices

    plain = await coi(
        "container", "mount", "--no-shift", box, "plain", str(tmp_path), "/mnt/plain", project=incus_project
    )
    assert plain.code == 0, plain.stderr
    assert "shift" not in (await incus.get_instance(box)).devices["plain"]
