"""What the egress tests share: their coi environment (its own HOME, runtime directory and so
egress daemon), loopback servers, running sessions, the daemon's log, and the check that a
session left nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from coi_async.errors import NotFoundError
from coi_async.incus import IncusClient
from coi_async.orchestration.network import registry
from coi_async.orchestration.network.daemon import read_pid
from coi_async.orchestration.network.paths import EgressPaths
from coi_async.orchestration.network.registry import Registration
from tests.coi_cli import COI, Run, coi

PREFIX = "h11-"
MIRROR = "http://deb.debian.org/debian/dists/bookworm/Release"
SECURITY = "http://security.debian.org/debian-security/dists/bookworm-security/Release"
# Never contacted: the daemon refuses them before any connect (asserted from its log).
PRIVATE = "10.20.30.40"
METADATA = "169.254.169.254"


def egress_paths(environ: dict[str, str]) -> EgressPaths:
    return EgressPaths.for_environment(environ)


@asynccontextmanager
async def loopback_server(body: bytes = b"loopback-ok") -> AsyncIterator[int]:
    """An HTTP server on host loopback; its port."""

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with suppress(anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound):
                await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


async def log_records(environ: dict[str, str], container: str | None = None) -> list[dict[str, object]]:
    done = await coi("network", "log", "--format", "json", *([container] if container else []), env=environ)
    assert done.code == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def refused_before_connect(records: list[dict[str, object]], host: str, fragment: str) -> None:
    mine = [r for r in records if r["host"] == host]
    assert mine, (host, records)
    for record in mine:
        assert record["decision"] == "refused", record
        assert record["stage"] == "policy", record  # the daemon's own check...
        assert record["connected"] is False, record  # ...before any connection was made
        assert fragment in str(record["reason"]), record


class Session:
    def __init__(self, environ: dict[str, str], registration: Registration) -> None:
        self.env = environ
        self.registration = registration

    @property
    def name(self) -> str:
        return self.registration.container

    async def inside(self, script: str) -> Run:
        """`sh -c SCRIPT` in the session, through `coi container exec` (its env is the instance's)."""
        return await coi(
            "container",
            "exec",
            self.name,
            "--capture",
            "--format",
            "raw",
            "--",
            "sh",
            "-c",
            script,
            env=self.env,
        )

    async def fetch(self, url: str) -> bool:
        done = await self.inside(f"wget -q -O /dev/null {url} && echo REACHED")
        return "REACHED" in done.stdout


async def until(check: Callable[[], bool | Awaitable[bool]], *, within_s: float, what: str) -> None:
    try:
        with anyio.fail_after(within_s):
            while True:
                result = check()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await anyio.sleep(0.2)
    except TimeoutError:
        pytest.fail(f"no {what} within {within_s:g}s")


@asynccontextmanager
async def running_session(environ: dict[str, str], workspace: Path, mode: str) -> AsyncIterator[Session]:
    """A `coi run -- sleep` session in `mode`, until the context ends (then Ctrl-C to its coi)."""
    paths = egress_paths(environ)
    process = await anyio.open_process(
        [COI, "run", "--network", mode, "--", "sleep", "600"],
        env=environ,
        cwd=workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        found: list[Registration] = []

        def registered() -> bool:
            found[:] = list(registry.read_all(paths).values())
            return bool(found) or process.returncode is not None

        await until(registered, within_s=90, what="a registration")
        assert process.returncode is None, "coi run ended before its session was registered"
        session = Session(environ, found[0])

        async def configured() -> bool:
            done = await session.inside("grep -q HTTP_PROXY /etc/environment && echo YES")
            return "YES" in done.stdout

        await until(configured, within_s=60, what="the proxy settings inside")
        yield session
    finally:
        with anyio.move_on_after(60, shield=True):
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()


def daemon_fds(paths: EgressPaths) -> list[str]:
    pid = read_pid(paths)
    if pid is None:
        return []
    found = []
    with suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with suppress(OSError):
                found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


async def assert_nothing_left(incus: IncusClient, environ: dict[str, str], session: Session) -> None:
    paths = egress_paths(environ)
    socket = session.registration.socket
    log = session.registration.log

    def gone() -> bool:
        return (
            not os.path.exists(socket)
            and not registry.read_all(paths)
            and log not in daemon_fds(paths)
            and not any(f.endswith(".sock") and "/s/" in f for f in daemon_fds(paths) if socket in f)
        )

    await until(gone, within_s=20, what="the session's socket, registration and log handle gone")
    with pytest.raises(NotFoundError):
        await incus.get_instance(session.name)  # and with the instance, its proxy device


async def negated(result: Awaitable[bool]) -> bool:
    return not await result


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ", 1)[-1][:1] != b"Z"
    except OSError:
        return False
