"""The egress server listening on a TCP port the way it does inside a container (egress/netns.py,
here in this process's own namespace), with a build's allowlist, against origin servers on
loopback: HTTP, CONNECT, refusals, port clashes. Needs root, as the daemon does."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import anyio.to_thread
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from coi_async.config.network import parse_entries
from coi_async.egress import DEFAULT_ALLOWLIST
from coi_async.egress.connection import ConnectionRecord, Limits
from coi_async.egress.policy import Policy
from coi_async.egress.server import EgressServer, SessionSpec
from tests.unit.egress_helpers import free_port, inside_here, send_and_read_to_end

_connect_tcp = anyio.connect_tcp  # kept: the no_connections fixture replaces the module attribute
Handler = Callable[[anyio.abc.SocketStream], Awaitable[None]]


@asynccontextmanager
async def origin(handler: Handler) -> AsyncIterator[int]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


def allowlist(*entries: str) -> Policy:
    return Policy(mode="allowlist", allow=parse_entries(entries))


@asynccontextmanager
async def one_server(
    port: int, *entries: str, events: list[ConnectionRecord] | None = None
) -> AsyncIterator[EgressServer]:
    """A server for one build container's allowlist, asked to listen on 127.0.0.1:`port`."""
    server = EgressServer(on_record=events.append if events is not None else None, limits=Limits(idle_s=10))
    with tempfile.TemporaryDirectory() as folder:
        spec = SessionSpec(
            key="build",
            socket=os.path.join(folder, "s.sock"),
            container="build-1",
            policy=allowlist(*entries),
            inside=inside_here(port),
        )
        async with server.running():
            await server.apply([spec])
            yield server


@asynccontextmanager
async def proxy_for(*entries: str, events: list[ConnectionRecord] | None = None) -> AsyncIterator[int]:
    port = free_port()
    async with one_server(port, *entries, events=events) as server:
        assert server.status()[0]["inside"] is True
        yield port


async def exchange(port: int, request: bytes) -> bytes:
    """Send a request to the proxy and read until it closes the connection."""
    async with await _connect_tcp("127.0.0.1", port) as stream:
        return await send_and_read_to_end(stream, request)


# --- plain HTTP ----------------------------------------------------------------------------------


async def test_http_request_is_forwarded_in_origin_form_with_connection_close() -> None:
    seen: list[bytes] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            head = await reader.receive_until(b"\r\n\r\n", 65536)
            seen.append(head)
            body = await reader.receive_exactly(4)
            seen.append(body)
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
                b"Keep-Alive: timeout=5\r\n\r\nhello"
            )
            # A keep-alive origin would wait here: the proxy must still finish the exchange.
            await anyio.sleep(30)

    events: list[ConnectionRecord] = []
    async with origin(serve) as oport, proxy_for(f"127.0.0.1:{oport}", events=events) as pport:
        reply = await exchange(
            pport,
            f"POST http://127.0.0.1:{oport}/pkg?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{oport}\r\n"
            "Proxy-Connection: keep-alive\r\nContent-Length: 4\r\n\r\nbody".encode(),
        )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in head
    assert b"Keep-Alive" not in head
    assert body == b"hello"
    request_line, *headers = seen[0].split(b"\r\n")
    assert request_line == b"POST /pkg?x=1 HTTP/1.1"
    assert b"Connection: close" in headers
    assert not any(h.lower().startswith(b"proxy-") for h in headers)
    assert seen[1] == b"body"
    assert [(e.decision, e.host, e.port, e.address) for e in events] == [
        ("allowed", "127.0.0.1", oport, "127.0.0.1")
    ]
    assert events[0].bytes_up == 4  # the body; the head is not counted
    assert events[0].bytes_down > 5


async def test_urllib_fetches_through_the_proxy() -> None:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with origin(serve) as oport, proxy_for(f"127.0.0.1:{oport}") as pport:
        proxies = {"http": f"http://127.0.0.1:{pport}"}

        def fetch() -> bytes:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
            with opener.open(f"http://127.0.0.1:{oport}/", timeout=10) as response:
                data: bytes = response.read()
                return data

        assert await anyio.to_thread.run_sync(fetch) == b"ok"


# --- CONNECT -------------------------------------------------------------------------------------


async def test_connect_tunnel_relays_bytes_both_ways() -> None:
    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            while True:
                try:
                    data = await stream.receive()
                except anyio.EndOfStream:
                    return
                await stream.send(data.upper())

    async with origin(echo) as oport, proxy_for(f"127.0.0.1:{oport}") as pport:
        with anyio.fail_after(10):
            async with await anyio.connect_tcp("127.0.0.1", pport) as stream:
                await stream.send(f"CONNECT 127.0.0.1:{oport} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                reader = BufferedByteReceiveStream(stream)
                status = await reader.receive_until(b"\r\n\r\n", 1024)
                assert status == b"HTTP/1.1 200 Connection established"
                await stream.send(b"ping")
                assert await reader.receive_exactly(4) == b"PING"
                await stream.send(b"pong")
                assert await reader.receive_exactly(4) == b"PONG"


# --- refusals ------------------------------------------------------------------------------------


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the proxy resolves or connects anywhere."""

    async def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the proxy tried to connect: {args}")

    monkeypatch.setattr(anyio, "connect_tcp", forbidden)
    monkeypatch.setattr(anyio, "getaddrinfo", forbidden)


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    ("request_bytes", "host", "port"),
    [
        (b"CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n", "github.com", 443),
        (b"GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n", "example.com", 80),
        (b"CONNECT deb.debian.org:22 HTTP/1.1\r\n\r\n", "deb.debian.org", 22),
    ],
)
async def test_hosts_outside_the_allowlist_are_refused_without_any_connection(
    request_bytes: bytes, host: str, port: int
) -> None:
    events: list[ConnectionRecord] = []
    async with proxy_for(*DEFAULT_ALLOWLIST, events=events) as pport:
        reply = await exchange(pport, request_bytes)
    assert reply.startswith(b"HTTP/1.1 403 Forbidden")
    assert f"{host}:{port} is not in the allowlist".encode() in reply
    assert b"deb.debian.org" in reply  # says what is allowed
    assert [(e.decision, e.stage, e.host, e.port, e.connected) for e in events] == [
        ("refused", "policy", host, port, False)
    ]


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    "request_bytes",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET https://x.org/ HTTP/1.1\r\n\r\n", b"nonsense\r\n\r\n"],
)
async def test_requests_that_are_not_proxy_requests_get_400(request_bytes: bytes) -> None:
    async with proxy_for(*DEFAULT_ALLOWLIST) as pport:
        reply = await exchange(pport, request_bytes)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request")


async def test_unreachable_allowed_origin_gets_502() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    closed_port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    events: list[ConnectionRecord] = []
    async with proxy_for(f"127.0.0.1:{closed_port}", events=events) as pport:
        reply = await exchange(pport, f"CONNECT 127.0.0.1:{closed_port} HTTP/1.1\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert (events[0].decision, events[0].stage) == ("failed", "connect")


async def test_a_port_in_use_is_a_clear_error() -> None:
    async with proxy_for(*DEFAULT_ALLOWLIST) as pport, one_server(pport) as server:
        (status,) = server.status()
        assert status["inside"] is False
        assert status["inside_error"] == f"port {pport} is already taken inside the container"


async def test_the_proxy_stops_listening_when_its_context_ends() -> None:
    async with proxy_for(*DEFAULT_ALLOWLIST) as pport:
        pass
    with pytest.raises(OSError, match=r"refused|Connect call failed|connection"):
        await anyio.connect_tcp("127.0.0.1", pport)


async def test_chunked_response_from_a_keep_alive_origin_ends_the_exchange() -> None:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
            await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await stream.send(b"3\r\nabc\r\n")
            await stream.send(b"2;ext=1\r\nde\r\n0\r\n\r\n")
            await anyio.sleep(30)  # keeps the connection open, as keep-alive origins do

    async with origin(serve) as oport, proxy_for(f"127.0.0.1:{oport}") as pport:
        reply = await exchange(pport, f"GET http://127.0.0.1:{oport}/ HTTP/1.1\r\n\r\n".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
