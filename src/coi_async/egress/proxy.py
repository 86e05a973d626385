"""A forward HTTP proxy that admits only an allowlist of hosts: plain HTTP and `CONNECT` tunnels.

A container without a network interface reaches it through an Incus `proxy` device on its own
loopback. The host check happens on the name the client asked for, before anything is resolved
or connected, so a refused host costs no traffic at all.

Plain HTTP is served one request per client connection (the origin is asked for
`Connection: close` and the client told the same): apt and npm reconnect as needed, and the proxy
never has to frame a keep-alive stream. `CONNECT` tunnels relay bytes both ways until both sides
are done or the tunnel has been idle too long.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Literal

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from coi_async.egress.allowlist import DEFAULT_ALLOWLIST, Allowlist, split_host_port
from coi_async.egress.http1 import (
    MAX_HEAD,
    Activity,
    RefusedError,
    Request,
    copy_until_eof,
    error_response,
    forward_response,
    parse_request_head,
)
from coi_async.errors import EgressError

__all__ = ["DEFAULT_ALLOWLIST", "Allowlist", "EgressProxy", "ProxyEvent", "split_host_port"]


class ProxyEvent(msgspec.Struct, frozen=True):
    """One decision of the proxy, for whoever shows progress (the CLI) or keeps a log."""

    action: Literal["allowed", "refused", "failed"]
    method: str
    host: str
    port: int
    detail: str = ""


EventSink = Callable[[ProxyEvent], None]


class EgressProxy:
    """The proxy; `serve()` runs it on host loopback for as long as its context is open."""

    def __init__(
        self,
        allowlist: Allowlist,
        *,
        on_event: EventSink | None = None,
        head_timeout_s: float = 30,
        connect_timeout_s: float = 30,
        idle_timeout_s: float = 300,
        max_connections: int = 256,
    ) -> None:
        self.allowlist = allowlist
        self._on_event = on_event
        self._head_timeout_s = head_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._limiter = anyio.CapacityLimiter(max_connections)

    @asynccontextmanager
    async def serve(self, *, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
        """Listen on host:port (0: any free port) and yield the port; stop on exit."""
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EgressError(
                    f"cannot start the egress proxy: {host}:{port} is already in use",
                    hint="choose another port, or 0 for any free one",
                ) from exc
            raise EgressError(f"cannot start the egress proxy on {host}:{port}: {exc}") from exc
        try:
            async with listener, anyio.create_task_group() as tg:
                bound = listener.extra(anyio.abc.SocketAttribute.local_port)
                tg.start_soon(listener.serve, self._handle_safely)
                try:
                    yield bound
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The accept loop never fails on its own, so a group here holds just the error of
            # the code that ran under `serve()`: give it back unwrapped, as it was raised.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    def _emit(self, event: ProxyEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    async def _handle_safely(self, client: anyio.abc.SocketStream) -> None:
        # One client's trouble must never stop the proxy: errors end its connection and nothing else.
        async with client, self._limiter:
            with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
                await self._handle(client)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        reader = BufferedByteReceiveStream(client)
        head: bytes | None = None
        with anyio.move_on_after(self._head_timeout_s):
            try:
                head = await reader.receive_until(b"\r\n\r\n", MAX_HEAD)
            except anyio.DelimiterNotFound:
                await client.send(
                    error_response(431, "Request Header Fields Too Large", "request head too long")
                )
                return
            except (anyio.IncompleteRead, anyio.EndOfStream):
                return
        if head is None:
            return  # the client never sent a whole request head
        try:
            request = parse_request_head(head)
        except RefusedError as refusal:
            self._emit(ProxyEvent("failed", "?", "", 0, refusal.detail))
            await client.send(error_response(refusal.status, refusal.reason, refusal.detail))
            return
        where = f"{request.host}:{request.port}"
        if not self.allowlist.permits(request.host, request.port):
            detail = f"{where} is not in the egress allowlist (allowed: {self.allowlist.describe()})"
            self._emit(ProxyEvent("refused", request.method, request.host, request.port, detail))
            await client.send(error_response(403, "Forbidden", detail))
            return
        upstream = await self._connect(client, request)
        if upstream is None:
            return
        self._emit(ProxyEvent("allowed", request.method, request.host, request.port))
        async with upstream:
            if request.method == "CONNECT":
                await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await self._relay(reader, client, upstream, method=request.method)
            else:
                await upstream.send(request.head)
                await self._relay(reader, client, upstream, method=request.method)

    async def _connect(
        self, client: anyio.abc.SocketStream, request: Request
    ) -> anyio.abc.SocketStream | None:
        where = f"{request.host}:{request.port}"
        status, reason, detail = 502, "Bad Gateway", ""
        with anyio.move_on_after(self._connect_timeout_s):
            try:
                return await anyio.connect_tcp(request.host, request.port)
            except OSError as exc:
                detail = f"cannot connect to {where}: {exc.strerror or exc}"
        if not detail:
            status, reason = 504, "Gateway Timeout"
            detail = f"no connection to {where} after {self._connect_timeout_s:g}s"
        self._emit(ProxyEvent("failed", request.method, request.host, request.port, detail))
        await client.send(error_response(status, reason, detail))
        return None

    async def _relay(
        self,
        client_in: BufferedByteReceiveStream,
        client: anyio.abc.SocketStream,
        upstream: anyio.abc.SocketStream,
        *,
        method: str,
    ) -> None:
        """Copy both ways until both sides are done (for plain HTTP: until the origin's response
        is through), or nothing has moved for the idle timeout."""
        activity = Activity()
        async with anyio.create_task_group() as tg:

            async def from_origin() -> None:
                if method == "CONNECT":
                    await copy_until_eof(upstream, client, activity)
                    return
                with suppress(anyio.DelimiterNotFound, anyio.IncompleteRead, anyio.EndOfStream, ValueError):
                    await forward_response(BufferedByteReceiveStream(upstream), client, method, activity)
                # One request per connection: once the response is through, we are done.
                tg.cancel_scope.cancel()

            async def watchdog() -> None:
                while True:
                    left = activity.last + self._idle_timeout_s - anyio.current_time()
                    if left <= 0:
                        break
                    await anyio.sleep(left)
                tg.cancel_scope.cancel()

            tg.start_soon(watchdog)
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(copy_until_eof, client_in, upstream, activity)
                pumps.start_soon(from_origin)
            tg.cancel_scope.cancel()
