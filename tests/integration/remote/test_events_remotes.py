"""`coi events --all-remotes`: local and every remote at once, in one stream. The remote is this
machine's incusd over loopback HTTPS (harness.py) in a project of its own, so what local
and the remote tell differs; beside it a remote pointed at a closed port and one whose pinned
certificate is not the server's, each told as `disconnected` once while the others go on."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from coi_async.incus import IncusClient
from coi_async.incus.certificates import fingerprint_of
from coi_async.naming import KEY_WORKSPACE
from tests.coi_cli import COI, coi
from tests.helpers import busybox, throwaway_project
from tests.integration.remote.harness import Remotes, server_certificate
from tests.integration.shell_harness import ShellWorld

pytestmark = pytest.mark.incus

PREFIX = "h14m-"
LAB = "lab"  # the loopback remote, in its own project
DEAD = "dead"  # the same, pointed at a closed port
MOVED = "moved"  # the same, pinned to another certificate


@pytest.fixture
def shell_prefix() -> str:
    return PREFIX


@pytest.fixture
def shell_config(incus_project: str) -> str:
    # Local's project from the config, not $INCUS_PROJECT, which would be every remote's too.
    return f'[incus]\nproject = "{incus_project}"\n'


@pytest.fixture
async def lab_project() -> AsyncIterator[str]:
    async with throwaway_project("coi-test-r-") as name:
        yield name


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _copy_remote(conf: Path, name: str, *, url: str | None = None, pem: str | None = None) -> None:
    """Another stored remote made of `lab`'s entry: at another URL, or pinned to another cert."""
    store = conf / "remotes.json"
    data = json.loads(store.read_text())
    entry = dict(data["remotes"][LAB])
    if url is not None:
        entry["url"] = url
    if pem is not None:
        entry["fingerprint"] = fingerprint_of(pem)
        (conf / "servercerts" / f"{name}.crt").write_text(pem)
    else:
        shutil.copy(conf / "servercerts" / f"{LAB}.crt", conf / "servercerts" / f"{name}.crt")
    data["remotes"][name] = entry
    store.write_text(json.dumps(data))


def _is(kind: str, **fields: str) -> Callable[[dict[str, Any]], bool]:
    """An event of type `kind` with these fields."""
    return lambda e: e["type"] == kind and all(e.get(k) == v for k, v in fields.items())


class Stream:
    """The lines of a running `coi events`, as they come."""

    def __init__(self, process: anyio.abc.Process, *, json_lines: bool = True) -> None:
        self.process = process
        self.json_lines = json_lines
        self.seen: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._buffer = b""

    async def _more(self) -> None:
        assert self.process.stdout is not None
        self._buffer += await self.process.stdout.receive()
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line:
                self.lines.append(line.decode())
                if self.json_lines:
                    self.seen.append(json.loads(line))

    async def until(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while not any(check(e) for e in self.seen):
            await self._more()
        return next(e for e in self.seen if check(e))

    async def until_line(self, check: Callable[[list[str]], bool]) -> str:
        """The first line whose words pass `check`."""
        while not any(check(line.split()) for line in self.lines):
            await self._more()
        return next(line for line in self.lines if check(line.split()))


@contextlib.asynccontextmanager
async def _events(world: ShellWorld, *args: str, remote: str = "") -> AsyncIterator[anyio.abc.Process]:
    """`coi [--remote REMOTE] events ARGS` running, local's project from the config."""
    env = {k: v for k, v in world.env().items() if k != "INCUS_PROJECT"}
    over = ["--remote", remote] if remote else []
    process = await anyio.open_process(
        [COI, *over, "events", *args], env=env, cwd=world.workspace, stderr=subprocess.PIPE
    )
    try:
        yield process
    finally:
        process.kill()
        assert process.stderr is not None
        with anyio.move_on_after(5):
            err = b"".join([chunk async for chunk in process.stderr])
            assert b"Traceback" not in err, err.decode(errors="replace")
        await process.aclose()


async def test_local_and_every_remote_at_once_each_with_its_resync_and_its_name(
    remotes: Remotes, lab_project: str, tmp_path: Path
) -> None:
    world = remotes.world
    added = await remotes.add(LAB, project=lab_project)
    assert added.code == 0, added.stderr
    dead_url = f"https://127.0.0.1:{_closed_port()}"
    _copy_remote(remotes.config_dir, DEAD, url=dead_url)
    other_cert, _ = server_certificate(tmp_path)
    _copy_remote(remotes.config_dir, MOVED, pem=other_cert.read_text())

    ws = secrets.token_hex(4)
    # Named like the world's sessions, so it removes the local one; the project goes with the other.
    here, there = world.container(1), world.container(2)
    lab: IncusClient = world.incus.in_project(lab_project)
    await world.incus.create_instance(busybox(here, config={KEY_WORKSPACE: f"/tmp/h14m-here-{ws}"}))
    await lab.create_instance(busybox(there, config={KEY_WORKSPACE: f"/tmp/h14m-there-{ws}"}))
    async with _events(world, "--all-remotes", "--format", "json") as process:
        stream = Stream(process)
        with anyio.fail_after(90):
            resyncs = {remote: await stream.until(_is("resync", remote=remote)) for remote in ("local", LAB)}
            dead = await stream.until(_is("disconnected", remote=DEAD))
            moved = await stream.until(_is("disconnected", remote=MOVED))
            # The other two go on.
            await world.incus.stop_instance(here, force=True)
            await lab.stop_instance(there, force=True)
            stopped = {
                remote: await stream.until(_is("instance-stopped", container=name))
                for remote, name in (("local", here), (LAB, there))
            }
            await anyio.sleep(3)  # a few more attempts at the two that are down
            await lab.start_instance(there)
            await stream.until(_is("instance-started", container=there))

    assert [s["container"] for s in resyncs["local"]["sessions"]] == [here]
    assert [s["container"] for s in resyncs[LAB]["sessions"]] == [there]
    assert resyncs["local"]["project"] == world.project
    assert resyncs[LAB]["project"] == lab_project
    assert stopped["local"]["remote"] == "local"
    assert stopped[LAB]["remote"] == LAB
    assert stopped[LAB]["workspace"] == f"/tmp/h14m-there-{ws}"
    assert stopped[LAB]["slot"] == 2
    assert f"cannot reach incusd at {dead_url}" in dead["detail"]
    assert "changed" in moved["detail"]
    assert fingerprint_of(other_cert.read_text()) in moved["detail"]
    # Down all along, retried, told once each; never a resync from them.
    down = [e["remote"] for e in stream.seen if e["type"] == "disconnected"]
    assert sorted(down) == [DEAD, MOVED], down
    assert {e["remote"] for e in stream.seen if e["type"] == "resync"} == {"local", LAB}
    assert all("remote" in e for e in stream.seen)


async def test_text_lines_name_the_remote_and_all_remotes_excludes_remote(
    remotes: Remotes, lab_project: str
) -> None:
    world = remotes.world
    added = await remotes.add(LAB, project=lab_project)
    assert added.code == 0, added.stderr
    async with _events(world, "--all-remotes") as process:
        stream = Stream(process, json_lines=False)
        with anyio.fail_after(60):
            there = await stream.until_line(lambda words: words[1:3] == [f"[{LAB}]", "resync:"])
            here = await stream.until_line(lambda words: words[1] == "resync:")
    assert "0 sessions: none" in there, there
    assert f"[{LAB}]" not in here, here

    # One remote's stream names it too (before, every event said `local`).
    async with _events(world, "--format", "json", remote=LAB) as process:
        with anyio.fail_after(60):
            first = await Stream(process).until(_is("resync"))
    assert (first["remote"], first["project"]) == (LAB, lab_project)

    env = {k: v for k, v in world.env().items() if k != "INCUS_PROJECT"}
    both = await coi("--remote", LAB, "events", "--all-remotes", env=env, cwd=world.workspace)
    both.one_error(2, "--all-remotes", "--remote")
