"""What the egress tests share: a client that reads an answer to its end, and an egress server
for one session whose every name resolves through a fake resolver and every connection goes to
an origin on loopback (`World` records what the server asked for)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from coi_async.config.network import IPAddress
from coi_async.egress.connection import ConnectionRecord, Limits
from coi_async.egress.netns import Inside, namespace_of
from coi_async.egress.policy import Policy
from coi_async.egress.server import EgressServer, SessionSpec


async def send_and_read_to_end(stream: anyio.abc.ByteStream, request: bytes) -> bytes:
    """Send `request`, then read until the other side closes; within 10 s."""
    with anyio.fail_after(10):
        await stream.send(request)
        chunks = []
        while True:
            try:
                chunks.append(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return b"".join(chunks)


PUBLIC = ipaddress.ip_address("93.184.215.14")
GOOD = b"GET http://public.test/x HTTP/1.1\r\nHost: public.test\r\n\r\n"


class World:
    """An origin on loopback standing in for every address, and what the server asked of it."""

    def __init__(self, origin_port: int) -> None:
        self.origin_port = origin_port
        self.answers: dict[str, list[Sequence[IPAddress]]] = {"public.test": [[PUBLIC]]}
        self.resolved: list[str] = []
        self.connected: list[tuple[str, int]] = []
        self.records: list[ConnectionRecord] = []
        self.fail_connect: BaseException | None = None

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        self.resolved.append(host)
        answers = self.answers.get(host)
        if not answers:
            raise OSError(-2, "Name or service not known")
        return answers.pop(0) if len(answers) > 1 else answers[0]

    async def connect(self, address: IPAddress, port: int) -> anyio.abc.SocketStream:
        self.connected.append((str(address), port))
        if self.fail_connect is not None:
            raise self.fail_connect
        return await anyio.connect_tcp("127.0.0.1", self.origin_port)


async def _origin(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        try:
            head = await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound):
            return
        if b"/big" not in head:
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\norigin")
            return
        with suppress(anyio.BrokenResourceError, OSError):
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
            for _ in range(1024):
                await stream.send(b"x" * 65536)


@asynccontextmanager
async def served(
    tmp_path: Path,
    policy: Policy | None = None,
    *,
    limits: Limits | None = None,
    log: bool = True,
    inside: Inside | None = None,
) -> AsyncIterator[tuple[EgressServer, World, str]]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _origin)
        world = World(listener.extra(anyio.abc.SocketAttribute.local_port))
        server = EgressServer(
            resolve=world.resolve, connect=world.connect, on_record=world.records.append, limits=limits
        )
        socket = str(tmp_path / "s.sock")
        spec = SessionSpec(
            key="k",
            socket=socket,
            container="c1",
            project="p",
            policy=policy or Policy(mode="restricted"),
            log=str(tmp_path / "logs" / "c1.jsonl") if log else "",
            inside=inside,
        )
        async with server.running():
            await server.apply([spec])
            yield server, world, socket
        tg.cancel_scope.cancel()


async def ask(socket: str, request: bytes) -> bytes:
    async with await anyio.connect_unix(socket) as stream:
        return await send_and_read_to_end(stream, request)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def inside_here(port: int) -> Inside:
    """A listener place in this process's own network namespace: where a container's would be."""
    return Inside(pid=os.getpid(), inode=namespace_of(os.getpid()), port=port)
