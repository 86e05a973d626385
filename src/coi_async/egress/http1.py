"""HTTP/1.x for the egress proxy: request heads parsed strictly, responses relayed exactly once.

Everything here reads bytes a container wrote, so every read is bounded (`MAX_HEAD`, `CHUNK`)
and anything malformed is refused with an error response rather than passed on.
"""

from __future__ import annotations

from contextlib import suppress
from urllib.parse import urlsplit

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from coi_async.egress.allowlist import split_host_port

MAX_HEAD = 64 * 1024
CHUNK = 64 * 1024
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te"}
)


class RefusedError(Exception):
    """A request the proxy answers itself, with an error status."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


class Request(msgspec.Struct, frozen=True):
    method: str
    host: str
    port: int
    head: bytes  # for plain HTTP: the head to send to the origin; empty for CONNECT


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise RefusedError(400, "Bad Request", f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return headers


def _strip_hop_by_hop(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    listed = set(_HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            listed.update(token.strip().lower() for token in value.split(","))
    return [(n, v) for n, v in headers if n.lower() not in listed]


def parse_request_head(head: bytes) -> Request:
    """Turn a client's request head into where to go and (for plain HTTP) what to send there."""
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise RefusedError(400, "Bad Request", f"malformed request line {lines[0][:80]!r}") from None
    if not version.startswith("HTTP/1."):
        raise RefusedError(400, "Bad Request", f"unsupported protocol {version!r}")
    headers = _parse_headers([line for line in lines[1:] if line])
    if method == "CONNECT":
        try:
            host, port = split_host_port(target)
        except ValueError:
            raise RefusedError(400, "Bad Request", f"bad CONNECT target {target!r}") from None
        return Request(method, host, port, b"")
    url = urlsplit(target)
    if url.scheme != "http" or not url.netloc:
        raise RefusedError(
            400,
            "Bad Request",
            f"expected an absolute http:// URL (or CONNECT for https), got {target[:80]!r}",
        )
    try:
        host, port = split_host_port(url.netloc.rpartition("@")[2], default_port=80)
    except ValueError:
        raise RefusedError(400, "Bad Request", f"bad host in {target[:80]!r}") from None
    path = url.path or "/"
    if url.query:
        path += f"?{url.query}"
    kept = _strip_hop_by_hop(headers)
    if not any(n.lower() == "host" for n, _ in kept):
        kept.insert(0, ("Host", url.netloc.rpartition("@")[2]))
    kept.append(("Connection", "close"))
    out = [f"{method} {path} {version}".encode("latin-1")]
    out += [f"{n}: {v}".encode("latin-1") for n, v in kept]
    return Request(method, host, port, b"\r\n".join(out) + b"\r\n\r\n")


def _rewrite_response_head(head: bytes) -> bytes:
    """The origin's response head, hop-by-hop headers dropped, and `Connection: close` added."""
    lines = head.split(b"\r\n")
    status_line, rest = lines[0], [line for line in lines[1:] if line]
    try:
        headers = _parse_headers(rest)
    except RefusedError:
        return head  # not ours to fix; pass it through as sent
    kept = _strip_hop_by_hop(headers)
    kept.append(("Connection", "close"))
    out = [status_line] + [f"{n}: {v}".encode("latin-1") for n, v in kept]
    return b"\r\n".join(out) + b"\r\n\r\n"


def error_response(status: int, reason: str, detail: str) -> bytes:
    body = f"coi egress proxy: {detail}\n".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Coi-Egress: refused\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class Activity:
    """When bytes last moved through a connection, in either direction."""

    def __init__(self) -> None:
        self.last = anyio.current_time()

    def touch(self) -> None:
        self.last = anyio.current_time()


_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


async def copy_until_eof(
    src: anyio.abc.ByteReceiveStream, dst: anyio.abc.ByteStream, activity: Activity
) -> None:
    while True:
        try:
            data = await src.receive(CHUNK)
        except _GONE:
            break
        activity.touch()
        await dst.send(data)
    with suppress(OSError, *_GONE):
        await dst.send_eof()


async def _copy_exactly(
    src: BufferedByteReceiveStream, dst: anyio.abc.ByteStream, size: int, activity: Activity
) -> None:
    while size > 0:
        data = await src.receive(min(size, CHUNK))
        activity.touch()
        size -= len(data)
        await dst.send(data)


async def _copy_chunked(
    src: BufferedByteReceiveStream, dst: anyio.abc.ByteStream, activity: Activity
) -> None:
    while True:
        line = await src.receive_until(b"\r\n", 4096)
        await dst.send(line + b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        await _copy_exactly(src, dst, size + 2, activity)  # the data and its CRLF
    while trailer := await src.receive_until(b"\r\n", MAX_HEAD):
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


async def forward_response(
    src: BufferedByteReceiveStream, client: anyio.abc.ByteStream, method: str, activity: Activity
) -> None:
    """Relay exactly one response: an origin that keeps the connection open anyway cannot stall us."""
    head = await src.receive_until(b"\r\n\r\n", MAX_HEAD)
    while 100 <= _status(head) < 200 and _status(head) != 101:  # interim responses (100 Continue)
        await client.send(head + b"\r\n\r\n")
        head = await src.receive_until(b"\r\n\r\n", MAX_HEAD)
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
        await copy_until_eof(src, client, activity)
