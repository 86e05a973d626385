"""One policy served on a TCP port of host loopback: the build container's egress.

The build container reaches it through an Incus `proxy` device on its own loopback. It is the
daemon's connection handling (connection.py) and accept loop (listener.py) with one policy, so a
build and a session are judged by the same code.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc

from coi_async.egress import connection
from coi_async.egress import listener as accept
from coi_async.egress.policy import Policy
from coi_async.egress.splice import tcp_connect
from coi_async.errors import EgressError

MAX_CONNECTIONS = 256


class EgressProxy:
    """`serve()` runs the proxy on host loopback for as long as its context is open."""

    def __init__(
        self,
        policy: Policy,
        *,
        on_record: connection.RecordSink | None = None,
        limits: connection.Limits | None = None,
        max_connections: int = MAX_CONNECTIONS,
        resolve: connection.Resolver = connection.system_resolve,
        connect: connection.Connector = tcp_connect,
    ) -> None:
        self.policy = policy
        self._handler = connection.ConnectionHandler(
            lambda: self.policy, on_record=on_record, limits=limits, resolve=resolve, connect=connect
        )
        self._pool = accept.SlotPool(max_connections)

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

        async def serve_one(stream: anyio.abc.ByteStream, slot: accept.Slot) -> None:
            await self._handler.handle(stream, on_head=slot.busy)

        try:
            async with listener, anyio.create_task_group() as tg:
                bound = listener.extra(anyio.abc.SocketAttribute.local_port)
                # One address, so one socket listener.
                (tcp,) = listener.listeners
                assert isinstance(tcp, anyio.abc.SocketListener)
                tg.start_soon(accept.serve, tcp, serve_one, self._pool)
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
