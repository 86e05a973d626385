"""One client connection through the egress daemon: read the head, decide, resolve, connect, relay.

The decision comes first and costs no traffic: the name is checked as asked for, then resolved
by the daemon itself, then every address is checked, and the connection goes to one of exactly
those addresses (never to the name, which a rebinding resolver could answer differently the
second time). Plain HTTP is one request per connection (`Connection: close` both ways); CONNECT
tunnels relay bytes both ways until both sides are done or the tunnel has been idle too long.

Every connection ends in exactly one `ConnectionRecord`, for the session's log.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from functools import partial
from typing import Literal

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from coi_async.config.network import IPAddress, parse_ip
from coi_async.egress import http1
from coi_async.egress.http1 import (
    MAX_HEAD,
    Meter,
    RefusedError,
    Request,
    copy_until_eof,
    error_response,
    forward_response,
    parse_request_head,
)
from coi_async.egress.policy import Policy
from coi_async.egress.splice import splice, spliceable, tcp_connect

Decision = Literal["allowed", "refused", "failed", "malformed"]
# Where it was decided: the request itself, the policy (before any connect), the resolver, the
# connect, or the relay afterwards.
Stage = Literal["request", "policy", "resolve", "connect", "relay"]


class ConnectionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One connection, as the session's log keeps it."""

    time: str  # RFC 3339 UTC, when the connection was accepted
    session: str = ""  # the container
    project: str = ""
    method: str = ""
    host: str = ""
    port: int = 0
    address: str = ""  # the address decided on: connected to, or refused
    decision: Decision
    stage: Stage
    reason: str = ""
    connected: bool = False  # whether any connection left the host for this request
    bytes_up: int = 0  # container to origin, after the request head
    bytes_down: int = 0  # origin to container
    seconds: float = 0.0


Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
Connector = Callable[[IPAddress, int], Awaitable[anyio.abc.SocketStream]]
RecordSink = Callable[[ConnectionRecord], None]


async def system_resolve(host: str, port: int) -> Sequence[IPAddress]:
    """Every address the host's resolver gives for `host`, in its order of preference."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: dict[IPAddress, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        found[ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])] = None
    return list(found)


# How a connection ends when one side goes away.
_ENDED = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    head_s: float = 10.0  # from accept until the whole request head is in
    resolve_s: float = 10.0
    connect_s: float = 15.0
    idle_s: float = 300.0  # a tunnel with no byte either way for this long is closed


class _Outcome:
    """What the record of this connection will say; filled in as the connection goes."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.time = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.request: Request | None = None
        self.address = ""
        self.decision: Decision = "failed"
        self.stage: Stage = "request"
        self.reason = "the client closed the connection before a whole request"
        self.connected = False
        self.meter = Meter()

    def decide(self, decision: Decision, stage: Stage, reason: str = "") -> None:
        self.decision, self.stage, self.reason = decision, stage, reason


class ConnectionHandler:
    """Serves connections of one session; `policy` is read per request, so it can change live."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        *,
        session: str = "",
        project: str = "",
        on_record: RecordSink | None = None,
        resolve: Resolver = system_resolve,
        connect: Connector = tcp_connect,
        limits: Limits | None = None,
    ) -> None:
        self._policy = policy
        self._where = (session, project)  # what every record of this handler is about
        self._on_record = on_record
        self._resolve, self._connect = resolve, connect
        self.limits = limits or Limits()

    async def handle(
        self, client: anyio.abc.ByteStream, *, on_head: Callable[[], None] | None = None
    ) -> None:
        """Serve one connection to its end. Never raises for anything the client or origin did."""
        outcome = _Outcome()
        try:
            async with client:
                await self._serve(client, outcome, on_head)
        except _ENDED:
            pass  # a side went away: that is how connections end; the record says how far it got
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not stop the daemon
            outcome.decide("failed", outcome.stage, f"internal error: {exc!r}")
        finally:
            self._record(outcome)

    def _record(self, outcome: _Outcome) -> None:
        if self._on_record is None:
            return
        request = outcome.request
        self._on_record(
            ConnectionRecord(
                time=outcome.time,
                session=self._where[0],
                project=self._where[1],
                method=request.method if request else "",
                host=request.host if request else "",
                port=request.port if request else 0,
                address=outcome.address,
                decision=outcome.decision,
                stage=outcome.stage,
                reason=outcome.reason,
                connected=outcome.connected,
                bytes_up=outcome.meter.up,
                bytes_down=outcome.meter.down,
                seconds=round(time.monotonic() - outcome.started, 3),
            )
        )

    async def _read_head(
        self, reader: BufferedByteReceiveStream, client: anyio.abc.ByteStream, outcome: _Outcome
    ) -> bytes | None:
        head: bytes | None = None
        with anyio.move_on_after(self.limits.head_s):
            try:
                head = await reader.receive_until(b"\r\n\r\n", MAX_HEAD)
                # receive_until accepts a longer head when it arrives in one piece.
                if len(head) > MAX_HEAD:
                    raise anyio.DelimiterNotFound(MAX_HEAD)
            except anyio.DelimiterNotFound:
                outcome.decide("malformed", "request", f"request head longer than {MAX_HEAD} bytes")
                await client.send(error_response(431, "Request Header Fields Too Large", outcome.reason))
                return None
            except (anyio.IncompleteRead, anyio.EndOfStream):
                return None
        if head is None:
            outcome.decide("malformed", "request", f"no whole request head within {self.limits.head_s:g}s")
        return head

    async def _serve(
        self, client: anyio.abc.ByteStream, outcome: _Outcome, on_head: Callable[[], None] | None
    ) -> None:
        reader = BufferedByteReceiveStream(client)
        head = await self._read_head(reader, client, outcome)
        if head is None:
            return
        if on_head is not None:
            on_head()
        try:
            request = parse_request_head(head)
        except RefusedError as refusal:
            outcome.decide("malformed", "request", refusal.detail)
            await client.send(error_response(refusal.status, refusal.reason, refusal.detail))
            return
        outcome.request = request
        policy = self._policy()
        verdict = policy.check_name(request.host, request.port)
        if not verdict.allowed:
            outcome.decide("refused", "policy", verdict.reason)
            outcome.address = request.host if parse_ip(request.host) else ""
            await client.send(error_response(403, "Forbidden", verdict.reason))
            return
        addresses = await self._resolved(client, request, outcome)
        if addresses is None:
            return
        verdict = policy.check_addresses(request.host, request.port, addresses)
        if not verdict.allowed:
            outcome.decide("refused", "policy", verdict.reason)
            outcome.address = ",".join(str(a) for a in addresses)
            await client.send(error_response(403, "Forbidden", verdict.reason))
            return
        upstream = await self._connected(client, request, addresses, outcome)
        if upstream is None:
            return
        outcome.decide("allowed", "relay")
        async with upstream:
            if request.method == "CONNECT":
                await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                await upstream.send(request.head)
            await self._relay(reader, client, upstream, request.method, outcome.meter)

    async def _resolved(
        self, client: anyio.abc.ByteStream, request: Request, outcome: _Outcome
    ) -> Sequence[IPAddress] | None:
        if (literal := parse_ip(request.host)) is not None:
            return [literal]
        detail = ""
        with anyio.move_on_after(self.limits.resolve_s):
            try:
                return await self._resolve(request.host, request.port)
            except OSError as exc:
                detail = f"cannot resolve {request.host}: {exc.strerror or exc}"
        detail = detail or f"no answer for {request.host} after {self.limits.resolve_s:g}s"
        outcome.decide("failed", "resolve", detail)
        await client.send(error_response(502, "Bad Gateway", detail))
        return None

    async def _connected(
        self,
        client: anyio.abc.ByteStream,
        request: Request,
        addresses: Sequence[IPAddress],
        outcome: _Outcome,
    ) -> anyio.abc.SocketStream | None:
        """A connection to the first of the checked addresses that answers."""
        where = f"{request.host}:{request.port}"
        errors: list[str] = []
        timed_out = True
        with anyio.move_on_after(self.limits.connect_s):
            for address in addresses:
                outcome.address, outcome.connected = str(address), True
                try:
                    return await self._connect(address, request.port)
                except OSError as exc:
                    errors.append(f"{address}: {exc.strerror or exc}")
            timed_out = False
        status, reason = (504, "Gateway Timeout") if timed_out else (502, "Bad Gateway")
        detail = f"cannot connect to {where} ({'; '.join(errors) or f'no answer after {self.limits.connect_s:g}s'})"
        outcome.decide("failed", "connect", detail)
        await client.send(error_response(status, reason, detail))
        return None

    async def _relay(
        self,
        client_in: BufferedByteReceiveStream,
        client: anyio.abc.ByteStream,
        upstream: anyio.abc.SocketStream,
        method: str,
        meter: Meter,
    ) -> None:
        """Copy both ways until both sides are done (for plain HTTP: until the origin's response
        is through), or nothing has moved for the idle limit."""
        async with anyio.create_task_group() as tg:

            async def from_origin() -> None:
                if method == "CONNECT":
                    await copy_raw(upstream, client, up=False)
                    return
                with suppress(anyio.DelimiterNotFound, anyio.IncompleteRead, anyio.EndOfStream, ValueError):
                    await forward_response(
                        BufferedByteReceiveStream(upstream), client, method, meter, body=copy_body
                    )
                # One request per connection: once the response is through, we are done.
                tg.cancel_scope.cancel()

            async def copy_raw(
                src: anyio.abc.ByteReceiveStream, dst: anyio.abc.ByteStream, *, up: bool
            ) -> None:
                """Until `src` ends: spliced when both sides allow it (after what `src` buffered)."""
                raw_src = spliceable(upstream if src is upstream else client)
                raw_dst = spliceable(dst)
                if raw_src is None or raw_dst is None:
                    await copy_until_eof(src, dst, meter, up=up)
                    return
                if isinstance(src, BufferedByteReceiveStream) and src.buffer:
                    pending = await src.receive(len(src.buffer))
                    meter.moved(len(pending), up=up)
                    await dst.send(pending)
                await splice(raw_src, raw_dst, lambda n: meter.moved(n, up=up))
                with suppress(*_ENDED):
                    await dst.send_eof()

            async def copy_body(
                src: BufferedByteReceiveStream, dst: anyio.abc.ByteStream, size: int | None, _: Meter
            ) -> None:
                raw_src, raw_dst = spliceable(upstream), spliceable(dst)
                if raw_src is None or raw_dst is None:
                    await http1.copy_body(src, dst, size, meter)
                    return
                if src.buffer:
                    pending = await src.receive(
                        len(src.buffer) if size is None else min(size, len(src.buffer))
                    )
                    meter.moved(len(pending), up=False)
                    await dst.send(pending)
                    if size is not None:
                        size -= len(pending)
                await splice(raw_src, raw_dst, lambda n: meter.moved(n, up=False), limit=size)

            async def watchdog() -> None:
                while True:
                    left = meter.last + self.limits.idle_s - anyio.current_time()
                    if left <= 0:
                        break
                    await anyio.sleep(left)
                tg.cancel_scope.cancel()

            async def pump(copy: Callable[[], Awaitable[None]]) -> None:
                try:
                    await copy()
                except _ENDED:
                    tg.cancel_scope.cancel()  # a side went away: so did the connection

            tg.start_soon(watchdog)
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(pump, partial(copy_raw, client_in, upstream, up=True))
                pumps.start_soon(pump, from_origin)
            tg.cancel_scope.cancel()
