"""HTTP/1.x for the egress daemon: request heads parsed strictly, responses relayed exactly once.

Everything here reads bytes a container wrote, so every read is bounded (`MAX_HEAD`,
`MAX_HEADERS`, `CHUNK`) and anything malformed is refused with an error response rather than
passed on: a request line that is not `METHOD TARGET HTTP/1.x`, a byte that has no business in a
head (NUL, a bare CR or LF, control characters), folded or nameless headers, a host that is not
plain ASCII (config.network.check_host), userinfo in the URI, a `Host` header naming another
host than the URI, or both `Content-Length` and `Transfer-Encoding`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextlib import suppress

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from coi_async.config.network import HostSyntaxError, split_host_port

MAX_HEAD = 32 * 1024
MAX_HEADERS = 100
CHUNK = 256 * 1024
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te"}
)
_METHOD = re.compile(r"[A-Z]{1,20}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
# Visible ASCII, space, tab and obs-text: what a header value may hold.
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_TARGET = re.compile(r"[\x21-\x7e]{1,8192}")


class RefusedError(Exception):
    """A request the daemon answers itself, with an error status."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def _bad(detail: str) -> RefusedError:
    return RefusedError(400, "Bad Request", detail)


class Request(msgspec.Struct, frozen=True):
    method: str
    host: str  # canonical (config.network.check_host)
    port: int
    head: bytes  # for plain HTTP: the head to send to the origin; empty for CONNECT


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    if len(lines) > MAX_HEADERS:
        raise RefusedError(431, "Request Header Fields Too Large", f"more than {MAX_HEADERS} headers")
    headers = []
    for line in lines:
        name, sep, value = line.partition(b":")
        text = name.decode("latin-1")
        if not sep or not _TOKEN.fullmatch(text) or not _VALUE.fullmatch(value):
            raise _bad(f"malformed header line {line[:80]!r}")
        headers.append((text, value.decode("latin-1").strip(" \t")))
    return headers


def _strip_hop_by_hop(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    listed = set(_HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            listed.update(token.strip().lower() for token in value.split(","))
    return [(n, v) for n, v in headers if n.lower() not in listed]


def _values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name]


def _authority(target: str) -> tuple[str, str]:
    """`http://AUTHORITY/rest` split into the authority and the origin-form rest."""
    if target[:7].lower() != "http://":
        if target[:8].lower() == "https://":
            raise _bad("https:// URLs go through CONNECT; set HTTPS_PROXY, not only HTTP_PROXY")
        raise _bad(f"expected an absolute http:// URL (or CONNECT for https), got {target[:80]!r}")
    rest = target[7:]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:].partition("#")[0]
    if "@" in authority:
        raise _bad("user names and passwords do not belong in the URL given to a proxy")
    if not path.startswith("/"):
        path = "/" + path
    return authority, path


def parse_request_head(head: bytes) -> Request:
    """Turn a client's request head into where to go and (for plain HTTP) what to send there."""
    if b"\x00" in head:
        raise _bad("NUL byte in the request head")
    lines = head.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise _bad("bare CR or LF in the request head")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise _bad(f"malformed request line {lines[0][:80]!r}") from None
    if (
        not _METHOD.fullmatch(method)
        or not _TARGET.fullmatch(target)
        or version not in ("HTTP/1.0", "HTTP/1.1")
    ):
        raise _bad(f"malformed request line {lines[0][:80]!r}")
    header_lines = [line for line in lines[1:] if line]
    if any(line[:1] in (b" ", b"\t") for line in header_lines):
        raise _bad("folded header lines are not accepted")
    headers = _parse_headers(header_lines)
    try:
        if method == "CONNECT":
            host, port = split_host_port(target)
            return Request(method, host, port, b"")
        authority, path = _authority(target)
        host, port = split_host_port(authority, default_port=80)
    except HostSyntaxError as exc:
        raise _bad(str(exc)) from None
    hosts = _values(headers, "host")
    if len(hosts) > 1:
        raise _bad("more than one Host header")
    if hosts:
        try:
            named = split_host_port(hosts[0], default_port=80)
        except HostSyntaxError as exc:
            raise _bad(f"Host header: {exc}") from None
        if named != (host, port):
            raise _bad(f"the Host header names {hosts[0][:80]!r} but the URL names {authority[:80]!r}")
    if _values(headers, "transfer-encoding") and _values(headers, "content-length"):
        raise _bad("both Content-Length and Transfer-Encoding")
    if len(set(_values(headers, "content-length"))) > 1:
        raise _bad("conflicting Content-Length headers")
    kept = _strip_hop_by_hop(headers)
    if not hosts:
        kept.insert(0, ("Host", authority))
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
        return head + b"\r\n\r\n"  # not ours to fix; pass it through as sent
    kept = _strip_hop_by_hop(headers)
    kept.append(("Connection", "close"))
    out = [status_line] + [f"{n}: {v}".encode("latin-1") for n, v in kept]
    return b"\r\n".join(out) + b"\r\n\r\n"


def error_response(status: int, reason: str, detail: str) -> bytes:
    body = f"coi egress: {detail}\n".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Coi-Egress: refused\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class Meter:
    """When bytes last moved through a connection, and how many went each way."""

    def __init__(self) -> None:
        self.last = anyio.current_time()
        self.up = 0  # client to origin
        self.down = 0  # origin to client

    def moved(self, size: int, *, up: bool) -> None:
        self.last = anyio.current_time()
        if up:
            self.up += size
        else:
            self.down += size


_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


async def copy_until_eof(
    src: anyio.abc.ByteReceiveStream, dst: anyio.abc.ByteStream, meter: Meter, *, up: bool
) -> None:
    while True:
        try:
            data = await src.receive(CHUNK)
        except _GONE:
            break
        meter.moved(len(data), up=up)
        await dst.send(data)
    with suppress(OSError, *_GONE):
        await dst.send_eof()


async def _copy_exactly(
    src: BufferedByteReceiveStream, dst: anyio.abc.ByteStream, size: int, meter: Meter
) -> None:
    while size > 0:
        data = await src.receive(min(size, CHUNK))
        meter.moved(len(data), up=False)
        size -= len(data)
        await dst.send(data)


async def _copy_chunked(src: BufferedByteReceiveStream, dst: anyio.abc.ByteStream, meter: Meter) -> None:
    while True:
        line = await src.receive_until(b"\r\n", 4096)
        await dst.send(line + b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        await _copy_exactly(src, dst, size + 2, meter)  # the data and its CRLF
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


# Copies a response body of this many bytes (None: until the origin closes) to the client.
BodyCopy = Callable[[BufferedByteReceiveStream, anyio.abc.ByteStream, "int | None", Meter], Awaitable[None]]


async def copy_body(
    src: BufferedByteReceiveStream, dst: anyio.abc.ByteStream, size: int | None, meter: Meter
) -> None:
    if size is None:
        await copy_until_eof(src, dst, meter, up=False)
    else:
        await _copy_exactly(src, dst, size, meter)


async def forward_response(
    src: BufferedByteReceiveStream,
    client: anyio.abc.ByteStream,
    method: str,
    meter: Meter,
    *,
    body: BodyCopy = copy_body,
) -> None:
    """Relay exactly one response: an origin that keeps the connection open anyway cannot stall us.

    ValueError (and anyio's read errors) for a response that is not HTTP/1.x.
    """
    head = await src.receive_until(b"\r\n\r\n", MAX_HEAD)
    while 100 <= _status(head) < 200 and _status(head) != 101:  # interim responses (100 Continue)
        await client.send(head + b"\r\n\r\n")
        head = await src.receive_until(b"\r\n\r\n", MAX_HEAD)
    meter.moved(len(head), up=False)
    await client.send(_rewrite_response_head(head))
    status = _status(head)
    if method == "HEAD" or status in (204, 304):
        return
    encoding = _header(head, b"transfer-encoding")
    length = _header(head, b"content-length")
    if encoding is not None and b"chunked" in encoding.lower():
        await _copy_chunked(src, client, meter)
    elif length is not None and status != 101:
        await body(src, client, int(length), meter)
    else:
        await body(src, client, None, meter)
