"""The Incus client against a real incusd, in a throwaway project."""

from __future__ import annotations

import os
import stat
import sys
import tarfile
import time
from pathlib import Path

import anyio
import msgspec
import pexpect
import pytest

from coi_async.config.model import Limits
from coi_async.errors import (
    ConflictError,
    IncusUnavailableError,
    NotFoundError,
)
from coi_async.incus import IncusClient, UnixEndpoint
from coi_async.incus.instances import config_filter
from coi_async.incus.models import (
    InstancePatch,
    LifecycleEvent,
    Profile,
)
from coi_async.orchestration.files.limits import copy_caps
from tests.helpers import busybox, remove_instance

CAPS = copy_caps(Limits())

pytestmark = pytest.mark.incus


@pytest.fixture
def box_name(unique: str) -> str:
    return f"{unique}-run"


async def test_server_info_lists_api_extensions(incus: IncusClient) -> None:
    info = await incus.server_info()
    assert info.has_extension("instance_create_start")
    assert info.environment.server_version


async def test_unknown_instance_is_not_found(incus: IncusClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await incus.get_instance("no-such-instance")
    assert caught.value.status == 404
    assert "not found" in str(caught.value).lower()
    assert not await incus.instance_exists("no-such-instance")


async def test_duplicate_create_is_a_conflict(incus: IncusClient, box: str) -> None:
    with pytest.raises(ConflictError):
        await incus.create_instance(busybox(box))


async def test_lifecycle_list_filter_stop_delete(incus: IncusClient, unique: str) -> None:
    name = f"{unique}-life"
    marker = {"user.coi.test": unique}
    await incus.create_instance(busybox(name, config=marker))
    try:
        assert (await incus.get_instance(name)).running
        found = await incus.list_instances(filter_expr=config_filter(marker))
        assert [i.name for i in found] == [name]
        with_state = await incus.list_instances(recursion=2, filter_expr=config_filter(marker))
        assert with_state[0].state is not None
        assert with_state[0].state.pid > 0

        await incus.update_instance(name, InstancePatch(config={"user.coi.extra": "1"}))
        assert (await incus.get_instance(name)).config["user.coi.extra"] == "1"

        started = time.monotonic()
        await incus.stop_instance(name, grace_s=30)
        # The busybox init handles SIGPWR: a graceful stop is quick, not the whole grace period.
        assert time.monotonic() - started < 10
        assert not (await incus.get_instance(name)).running
        await incus.start_instance(name)
        await incus.stop_instance(name, force=True)
        assert (await incus.get_instance_state(name)).status == "Stopped"
    finally:
        await remove_instance(incus, name)
    assert not await incus.instance_exists(name)


async def test_delete_running_instance_is_refused(incus: IncusClient, box: str) -> None:
    with pytest.raises(Exception, match="running"):
        await incus.delete_instance(box)
    assert await incus.instance_exists(box)


@pytest.mark.parametrize("code", [0, 1, 42])
async def test_exec_exit_codes_and_exact_output(incus: IncusClient, box: str, code: int) -> None:
    result = await incus.exec(
        box,
        ["sh", "-c", f"printf 'out\\000\\377\\n'; printf 'err\\001' >&2; exit {code}"],
    )
    assert result.exit_code == code
    assert result.stdout == b"out\x00\xff\n"
    assert result.stderr == b"err\x01"


async def test_exec_stdin_reaches_the_command_then_eof(incus: IncusClient, box: str) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB of every byte value
    result = await incus.exec(box, ["sh", "-c", "cat > /tmp/in; wc -c < /tmp/in"], stdin=payload)
    assert result.exit_code == 0
    assert result.stdout.strip() == str(len(payload)).encode()
    back = await incus.exec(box, ["cat", "/tmp/in"])
    assert back.stdout == payload


async def test_exec_user_cwd_env(incus: IncusClient, box: str) -> None:
    result = await incus.exec(
        box,
        ["sh", "-c", "id -u; id -g; pwd; echo $GREETING"],
        user=1000,
        group=1000,
        cwd="/tmp",
        env={"GREETING": "hi there"},
    )
    assert result.stdout.decode().split("\n")[:4] == ["1000", "1000", "/tmp", "hi there"]


async def test_an_exec_incusd_could_not_start_is_started_again(incus: IncusClient, box: str) -> None:
    # With the container's process limit used up, incusd's attach cannot fork and fails the exec
    # before the command starts ("Failed to retrieve PID of executing child process"), as it does
    # now and then right after a start or under load. The limit is lifted a moment later.
    await incus.update_instance(box, InstancePatch(config={"limits.processes": "12"}))
    await incus.exec(box, ["sh", "-c", "for i in $(seq 20); do sleep 60 & done 2>/dev/null; true"])
    lifted_after_s = 0.3

    async def lift() -> None:
        await anyio.sleep(lifted_after_s)
        await incus.update_instance(box, InstancePatch(config={"limits.processes": "1000"}))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lift)
        result = await incus.exec(box, ["sh", "-c", "echo ran >> /tmp/runs; cat /tmp/runs"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b"ran\n"  # started once, not twice
    assert time.monotonic() - started >= lifted_after_s  # it could only run once the limit was gone


async def test_an_exec_given_up_on_ends_at_once_and_its_command_with_it(incus: IncusClient, box: str) -> None:
    """A caller's deadline (Ctrl-C, a bounded check) ends a still-running exec promptly: its
    command is killed rather than each of its streams waiting out the websocket's close."""
    for _ in range(2):
        started = time.monotonic()
        with anyio.move_on_after(1.0):
            await incus.exec(box, ["sleep", "600"])
        assert time.monotonic() - started < 4
    left = await incus.exec(box, ["sh", "-c", "pgrep -x sleep || true"])
    assert left.stdout == b""


async def test_exec_missing_command_gives_127(incus: IncusClient, box: str) -> None:
    result = await incus.exec(box, ["/no/such/command"])
    assert result.exit_code in (126, 127)


async def test_interactive_exec_through_a_pty(incus: IncusClient, incus_project: str, box: str) -> None:
    driver = Path(__file__).with_name("pty_driver.py")
    child = pexpect.spawn(
        sys.executable,
        # A plain read-eval loop: busybox ash's line editor would first query the cursor position.
        [str(driver), incus_project, box, "sh", "-c", 'while read -r l; do eval "$l"; done'],
        cwd=str(Path(__file__).parents[2]),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        dimensions=(24, 80),
        timeout=20,
    )
    try:
        child.sendline("echo ab''cd")
        child.expect("abcd")
        child.sendline("stty size")
        child.expect("24 80")
        child.setwinsize(40, 123)
        # The resize travels through SIGWINCH and the control socket; give it a moment.
        for _ in range(20):
            child.sendline("stty size")
            if child.expect(["40 123", pexpect.TIMEOUT], timeout=1) == 0:
                break
        else:
            pytest.fail("the resize never reached the instance")
        child.sendline("exit 7")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 7


async def test_file_round_trip_keeps_bytes_mode_and_owner(incus: IncusClient, box: str) -> None:
    data = os.urandom(300_000) + b"\x00end"
    await incus.push_file(box, "/tmp/blob.bin", data, uid=1000, gid=1000, mode=0o640)
    pulled = await incus.pull_file(box, "/tmp/blob.bin")
    assert pulled.data == data
    assert (pulled.info.uid, pulled.info.gid, pulled.info.mode) == (1000, 1000, 0o640)
    listing = await incus.exec(box, ["stat", "-c", "%u %g %a", "/tmp/blob.bin"])
    assert listing.stdout.decode().strip() == "1000 1000 640"


async def test_streamed_file_push_and_pull(incus: IncusClient, box: str, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024))
    src.chmod(0o751)
    await incus.push_file_from(box, "/tmp/big.bin", src, uid=1000, gid=1000)
    dst = tmp_path / "back.bin"
    info = await incus.pull_file_to(box, "/tmp/big.bin", dst)
    assert dst.read_bytes() == src.read_bytes()
    assert info.mode == 0o751
    assert info.uid == 1000
    assert stat.S_IMODE(dst.stat().st_mode) == 0o751


async def test_directory_round_trip(incus: IncusClient, box: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub dir").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub dir" / "b.bin").write_bytes(b"\x00\x01\x02")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    await incus.push_directory(box, src, "/home/code/proj", uid=1000, gid=1000)
    owners = await incus.exec(box, ["stat", "-c", "%u:%g", "/home/code/proj/sub dir/b.bin"])
    assert owners.stdout.decode().strip() == "1000:1000"
    dst = tmp_path / "dst"
    await incus.pull_directory(box, "/home/code/proj", dst, caps=CAPS)
    assert (dst / "a.txt").read_text() == "alpha"
    assert (dst / "sub dir" / "b.bin").read_bytes() == b"\x00\x01\x02"
    assert os.access(dst / "run.sh", os.X_OK)


async def test_directory_pull_never_writes_outside_target(
    incus: IncusClient, box: str, tmp_path: Path
) -> None:
    await incus.exec(
        box,
        [
            "sh",
            "-c",
            (
                "mkdir -p /tmp/evil && ln -s /etc /tmp/evil/link && "
                "ln -s ../../../../../../tmp/escape /tmp/evil/up"
            ),
        ],
    )
    dst = tmp_path / "dst"
    await incus.exec(box, ["sh", "-c", "echo ok > /tmp/evil/fine.txt"])
    skipped = await incus.pull_directory(box, "/tmp/evil", dst, caps=CAPS)
    assert (dst / "fine.txt").read_text() == "ok\n"
    assert set(skipped) == {"./link", "./up"}
    # Links are copied as links (never followed on the host) or refused; nothing lands outside.
    for entry in dst.rglob("*"):
        assert entry.is_symlink() or entry.resolve().is_relative_to(dst.resolve())
    assert not Path("/tmp/escape").exists()


async def test_events_report_create_and_delete(incus: IncusClient, unique: str) -> None:
    name = f"{unique}-ev"
    seen: list[str] = []
    async with incus.events(("lifecycle",)) as stream:
        await incus.create_instance(busybox(name, start=False))
        await incus.delete_instance(name)
        with anyio.fail_after(15):
            async for event in stream:
                life = msgspec.json.decode(event.metadata, type=LifecycleEvent)
                if life.name == name and life.project == incus.project:
                    seen.append(life.action)
                if "instance-deleted" in seen:
                    break
    assert seen[0] == "instance-created"
    assert seen[-1] == "instance-deleted"


async def test_the_event_stream_stays_open_past_incusds_keepalive(incus: IncusClient, unique: str) -> None:
    # incusd pings the stream every 10 s and drops it after three pings with no answer.
    name = f"{unique}-quiet"

    async def create_later() -> None:
        await anyio.sleep(35)
        await incus.create_instance(busybox(name, start=False))

    try:
        async with incus.events(("lifecycle",)) as stream, anyio.create_task_group() as tg:
            tg.start_soon(create_later)
            with anyio.fail_after(50):
                async for event in stream:
                    if msgspec.json.decode(event.metadata, type=LifecycleEvent).name == name:
                        break
    finally:
        await remove_instance(incus, name)


async def test_missing_socket_is_one_clear_error(tmp_path: Path) -> None:
    endpoint = UnixEndpoint(tmp_path / "nope.socket")
    with pytest.raises(IncusUnavailableError) as caught:
        async with IncusClient.connect(endpoint) as client:
            await client.server_info()
    assert str(caught.value) == f"cannot reach incusd: no socket at {tmp_path / 'nope.socket'}"
    assert caught.value.hint
    assert "INCUS_SOCKET" in caught.value.hint


async def test_profiles(incus: IncusClient, unique: str, incus_project: str) -> None:
    # Profiles are shared from the default project (features.profiles=false), so use a unique name.
    name = f"coi-test-{unique}"
    async with IncusClient.connect() as default:
        await default.create_profile(Profile(name=name, config={"limits.cpu": "1"}))
        try:
            assert (await default.get_profile(name)).config == {"limits.cpu": "1"}
            assert name in [p.name for p in await default.list_profiles()]
        finally:
            await default.delete_profile(name)
        with pytest.raises(NotFoundError):
            await default.get_profile(name)


async def test_projects(incus: IncusClient, unique: str) -> None:
    name = f"coi-test-{unique}-p"
    await incus.create_project(name, config={"features.images": "false"})
    try:
        assert (await incus.get_project(name)).config["features.images"] == "false"
        assert name in [p.name for p in await incus.list_projects()]
    finally:
        await incus.delete_project(name)
    with pytest.raises(NotFoundError):
        await incus.get_project(name)


async def test_images_import_alias_publish_delete(
    incus: IncusClient, box: str, unique: str, tmp_path: Path
) -> None:
    async with IncusClient.connect() as default:  # images live in the default project here
        tarball = tmp_path / "img.tar"
        rootfs = tmp_path / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "bin" / "hello").write_text("hi")
        (tmp_path / "metadata.yaml").write_text(
            f"architecture: x86_64\ncreation_date: {int(time.time())}\nproperties:\n  description: {unique}\n"
        )
        with tarfile.open(tarball, "w") as tar:
            tar.add(tmp_path / "metadata.yaml", arcname="metadata.yaml")
            tar.add(rootfs, arcname="rootfs")
        alias = f"coi-test-{unique}-img"
        fingerprint = await default.import_image(tarball, aliases=[alias], properties={"os": "test"})
        try:
            image = await default.find_image(alias)
            assert image is not None
            assert image.fingerprint == fingerprint
            assert alias in image.alias_names
            assert fingerprint in [i.fingerprint for i in await default.list_images()]
            await default.point_image_alias(f"{alias}-2", fingerprint)
            assert (await default.get_image_alias(f"{alias}-2")).target == fingerprint
            await default.delete_image_alias(f"{alias}-2")
            with pytest.raises(NotFoundError):
                await default.get_image_alias(f"{alias}-2")
        finally:
            await default.delete_image(fingerprint)
        assert await default.find_image(alias) is None

        await incus.stop_instance(box, force=True)
        published = await incus.publish_image(box, aliases=[f"{alias}-pub"], properties={"k": "v"})
        try:
            image = await default.get_image(published)
            assert f"{alias}-pub" in image.alias_names
            assert image.properties.get("k") == "v"
        finally:
            await default.delete_image(published)


async def test_stat_of_missing_path_is_not_found(incus: IncusClient, box: str) -> None:
    with pytest.raises(NotFoundError):
        await incus.stat_file(box, "/no/such/file")
