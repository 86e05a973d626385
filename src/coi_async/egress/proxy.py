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
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from typing import Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from coi_async.errors import EgressError

# The package registries the shipped recipes use; nothing else.
DEFAULT_ALLOWLIST: tuple[str, ...] = ("deb.debian.org", "security.debian.org", "registry.npmjs.org")
DEFAULT_PORTS: frozenset[int] = frozenset({80, 443})

_MAX_HEAD = 64 * 1024
_CHUNK = 64 * 1024
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te"}
)


class _Rule(msgspec.Struct, frozen=True):
    host: str  # lower case, no trailing dot; "*.x.org" matches every name below x.org
    port: int | None  # None: the default web ports

    def matches(self, host: str, port: int) -> bool:
        if self.port is None:
            if port not in DEFAULT_PORTS:
                return False
        elif port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


def _normalise_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def split_host_port(authority: str, *, default_port: int | None = None) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or (with a default port) a bare host; ValueError if malformed."""
    authority = authority.strip()
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"bad address {authority!r}")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {authority!r}")
        port_text = rest[1:] if rest else ""
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    else:
        host, port_text = authority, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"no port in {authority!r}")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"bad port in {authority!r}")
        port = int(port_text)
    host = _normalise_host(host)
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad address {authority!r}")
    return host, port


class Allowlist(msgspec.Struct, frozen=True):
    """Which hosts the proxy lets through.

    Entries: `host` (ports 80 and 443), `host:port`, `*.domain` (every name below domain),
    `[v6]:port`. Names are compared case-blind; an IP address only matches an entry for that
    address, never a name that might resolve to it.
    """

    rules: tuple[_Rule, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        rules = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                if entry.startswith("[") or entry.count(":") == 1:
                    host, port = split_host_port(entry)
                    rules.append(_Rule(host, port))
                else:
                    host = _normalise_host(entry)
                    if ":" in host:
                        ipaddress.IPv6Address(host)  # a bare v6 address; anything else is a typo
                    rules.append(_Rule(host, None))
            except ValueError as exc:
                raise EgressError(f"bad egress allowlist entry {raw!r}: {exc}") from exc
            pattern = rules[-1].host
            if "*" in pattern and (not pattern.startswith("*.") or "*" in pattern[1:]):
                raise EgressError(f"bad egress allowlist entry {raw!r}: '*' only as '*.domain'")
        return cls(tuple(rules))

    def permits(self, host: str, port: int) -> bool:
        name = _normalise_host(host)
        return any(rule.matches(name, port) for rule in self.rules)

    def describe(self) -> str:
        return ", ".join(r.host if r.port is None else f"{r.host}:{r.port}" for r in self.rules) or "nothing"


class ProxyEvent(msgspec.Struct, frozen=True):
    """One decision of the proxy, for whoever shows progress (the CLI) or keeps a log."""

    action: Literal["allowed", "refused", "failed"]
    method: str
    host: str
    port: int
    detail: str = ""


EventSink = Callable[[ProxyEvent], None]


class _RefusedError(Exception):
    """A request the proxy answers itself, with an error status."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


class _Request(msgspec.Struct, frozen=True):
    method: str
    host: str
    port: int
    head: bytes  # for plain HTTP: the head to send to the origin; empty for CONNECT


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise _RefusedError(400, "Bad Request", f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return headers


def _strip_hop_by_hop(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    listed = set(_HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            listed.update(token.strip().lower() for token in value.split(","))
    return [(n, v) for n, v in headers if n.lower() not in listed]


def parse_request_head(head: bytes) -> _Request:
    """Turn a client's request head into where to go and (for plain HTTP) what to send there."""
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise _RefusedError(400, "Bad Request", f"malformed request line {lines[0][:80]!r}") from None
    if not version.startswith("HTTP/1."):
        raise _RefusedError(400, "Bad Request", f"unsupported protocol {version!r}")
    headers = _parse_headers([line for line in lines[1:] if line])
    if method == "CONNECT":
        try:
            host, port = split_host_port(target)
        except ValueError:
            raise _RefusedError(400, "Bad Request", f"bad CONNECT target {target!r}") from None
        return _Request(method, host, port, b"")
    url = urlsplit(target)
    if url.scheme != "http" or not url.netloc:
        raise _RefusedError(
            400,
            "Bad Request",
            f"expected an absolute http:// URL (or CONNECT for https), got {target[:80]!r}",
        )
    try:
        host, port = split_host_port(url.netloc.rpartition("@")[2], default_port=80)
    except ValueError:
        raise _RefusedError(400, "Bad Request", f"bad host in {target[:80]!r}") from None
    path = url.path or "/"
    if url.query:
        path += f"?{url.query}"
    kept = _strip_hop_by_hop(headers)
    if not any(n.lower() == "host" for n, _ in kept):
        kept.insert(0, ("Host", url.netloc.rpartition("@")[2]))
    kept.append(("Connection", "close"))
    out = [f"{method} {path} {version}".encode("latin-1")]
    out += [f"{n}: {v}".encode("latin-1") for n, v in kept]
    return _Request(method, host, port, b"\r\n".join(out) + b"\r\n\r\n")


def _rewrite_response_head(head: bytes) -> bytes:
    """The origin's response head, hop-by-hop headers dropped, and `Connection: close` added."""
    lines = head.split(b"\r\n")
    status_line, rest = lines[0], [line for line in lines[1:] if line]
    try:
        headers = _parse_headers(rest)
    except _RefusedError:
        return head  # not ours to fix; pass it through as sent
    kept = _strip_hop_by_hop(headers)
    kept.append(("Connection", "close"))
    out = [status_line] + [f"{n}: {v}".encode("latin-1") for n, v in kept]
    return b"\r\n".join(out) + b"\r\n\r\n"


def _error_response(status: int, reason: str, detail: str) -> bytes:
    body = f"coi egress proxy: {detail}\n".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Coi-Egress: refused\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


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
                head = await reader.receive_until(b"\r\n\r\n", _MAX_HEAD)
            except anyio.DelimiterNotFound:
                await client.send(
                    _error_response(431, "Request Header Fields Too Large", "request head too long")
                )
                return
            except (anyio.IncompleteRead, anyio.EndOfStream):
                return
        if head is None:
            return  # the client never sent a whole request head
        try:
            request = parse_request_head(head)
        except _RefusedError as refusal:
            self._emit(ProxyEvent("failed", "?", "", 0, refusal.detail))
            await client.send(_error_response(refusal.status, refusal.reason, refusal.detail))
            return
        where = f"{request.host}:{request.port}"
        if not self.allowlist.permits(request.host, request.port):
            detail = f"{where} is not in the egress allowlist (allowed: {self.allowlist.describe()})"
            self._emit(ProxyEvent("refused", request.method, request.host, request.port, detail))
            await client.send(_error_response(403, "Forbidden", detail))
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
        self, client: anyio.abc.SocketStream, request: _Request
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
        await client.send(_error_response(status, reason, detail))
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
        activity = _Activity()
        async with anyio.create_task_group() as tg:

            async def from_origin() -> None:
                if method == "CONNECT":
                    await _copy_until_eof(upstream, client, activity)
                    return
                with suppress(anyio.DelimiterNotFound, anyio.IncompleteRead, anyio.EndOfStream, ValueError):
                    await _forward_response(BufferedByteReceiveStream(upstream), client, method, activity)
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
                pumps.start_soon(_copy_until_eof, client_in, upstream, activity)
                pumps.start_soon(from_origin)
            tg.cancel_scope.cancel()


class _Activity:
    """When bytes last moved through a connection, in either direction."""

    def __init__(self) -> None:
        self.last = anyio.current_time()

    def touch(self) -> None:
        self.last = anyio.current_time()


_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


async def _copy_until_eof(
    src: anyio.abc.ByteReceiveStream, dst: anyio.abc.ByteStream, activity: _Activity
) -> None:
    while True:
        try:
            data = await src.receive(_CHUNK)
        except _GONE:
            break
        activity.touch()
        await dst.send(data)
    with suppress(OSError, *_GONE):
        await dst.send_eof()


async def _copy_exactly(
    src: BufferedByteReceiveStream, dst: anyio.abc.ByteStream, size: int, activity: _Activity
) -> None:
    while size > 0:
        data = await src.receive(min(size, _CHUNK))
        activity.touch()
        size -= len(data)
        await dst.send(data)


async def _copy_chunked(
    src: BufferedByteReceiveStream, dst: anyio.abc.ByteStream, activity: _Activity
) -> None:
    while True:
        line = await src.receive_until(b"\r\n", 4096)
        await dst.send(line + b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        await _copy_exactly(src, dst, size + 2, activity)  # the data and its CRLF
    while trailer := await src.receive_until(b"\r\n", _MAX_HEAD):
        await dst.send(trailer + b"\r\n")
    await dst.send(b"\r\n")


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def _forward_response(
    src: BufferedByteReceiveStream, client: anyio.abc.ByteStream, method: str, activity: _Activity
) -> None:
    """Relay exactly one response: an origin that keeps the connection open anyway cannot stall us."""
    head = await src.receive_until(b"\r\n\r\n", _MAX_HEAD)
    while 100 <= _status(head) < 200 and _status(head) != 101:  # interim responses (100 Continue)
        await client.send(head + b"\r\n\r\n")
        head = await src.receive_until(b"\r\n\r\n", _MAX_HEAD)
    activity.touch()
    await client.send(_rewrite_response_head(head))
    status = _status(head)
    if method == "HEAD" or status in (204, 304):
        return
    encoding = _header(head, b"transfer-encoding")
    length = _header(head, b"content-length")
    if encoding is not None and b"chunked" in encoding.lower():
        await _copy_chunked(src, client, activity)
    elif length is not None and status != 101:
        await _copy_exactly(src, client, int(length), activity)
    else:
        await _copy_until_eof(src, client, activity)
