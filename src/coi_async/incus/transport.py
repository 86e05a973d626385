"""The only module that touches aiohttp: HTTP and websockets to incusd over its unix socket or HTTPS.

Deadlines belong to the callers' cancel scopes; the session sets only a connect timeout, because
long polls (`/wait`), uploads and exec streams legitimately last as long as the caller wants.
Every aiohttp or decoding error leaves this module as an `IncusError`.
"""

from __future__ import annotations

import errno
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import IO, Any

import anyio
import msgspec


@contextmanager
def _without_system_certificates() -> Iterator[None]:
    """aiohttp builds two TLS contexts as it is imported, each loading the system's CA store:
    about 70 ms of every coi command. coi never uses them (every HTTPS connection it makes has
    its own context, with the remote's pinned certificate), so they are built without the store:
    they trust nothing and would fail closed."""
    load, verify_paths = ssl.SSLContext.load_default_certs, ssl.SSLContext.set_default_verify_paths
    ssl.SSLContext.load_default_certs = lambda *_a, **_k: None  # type: ignore[method-assign]
    ssl.SSLContext.set_default_verify_paths = lambda *_a, **_k: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        ssl.SSLContext.load_default_certs = load  # type: ignore[method-assign]
        ssl.SSLContext.set_default_verify_paths = verify_paths  # type: ignore[method-assign]


with _without_system_certificates():
    import aiohttp

from coi_async.errors import IncusError, IncusUnavailableError, PermissionDeniedError, ServerNotReadyError
from coi_async.incus.classify import classify
from coi_async.incus.endpoint import Endpoint, HttpsEndpoint, UnixEndpoint
from coi_async.incus.models import ENVELOPE_DECODER, AsyncResponse, ErrorResponse, SyncResponse
from coi_async.incus.server_cert import (
    CONNECT_S,
    HANDSHAKE_S,
    REMOTE_HINT,
    fetch_server_certificate,
    fingerprint_of_der,
)

Params = Mapping[str, str]
CHUNK = 256 * 1024

_SETUP_HINT = "start it with `sudo systemctl start incus` or this project's scripts/setup-incus"


def _unavailable(where: str, exc: OSError | None) -> IncusUnavailableError:
    code = exc.errno if exc is not None else None
    if code is None and exc is not None and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__  # anyio's "All connection attempts failed" has the real one below
        code = exc.errno
    if where.startswith("https://"):
        reason = (exc.strerror if exc is not None and exc.strerror else str(exc)) or "no answer"
        if code == errno.ECONNREFUSED:
            reason = "connection refused"
        return IncusUnavailableError(f"cannot reach incusd at {where}: {reason}", hint=REMOTE_HINT)
    if code in (errno.ENOENT, errno.ENOTDIR):
        return IncusUnavailableError(
            f"cannot reach incusd: no socket at {where}",
            hint=f"is Incus installed and running? {_SETUP_HINT}; or set INCUS_SOCKET",
        )
    if code in (errno.EACCES, errno.EPERM):
        return IncusUnavailableError(
            f"cannot reach incusd at {where}: permission denied",
            hint="add your user to the incus-admin group (sudo usermod -aG incus-admin $USER), "
            "then log in again",
        )
    if code == errno.ECONNREFUSED:
        return IncusUnavailableError(
            f"cannot reach incusd at {where}: connection refused (incusd is not running)",
            hint=_SETUP_HINT,
        )
    reason = exc.strerror if exc is not None and exc.strerror else str(exc)
    return IncusUnavailableError(f"cannot reach incusd at {where}: {reason}", hint=_SETUP_HINT)


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class WebSocket:
    """One incusd websocket: binary frames carry data, an empty text frame (or a close) ends it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def send_bytes(self, data: bytes) -> None:
        try:
            await self._ws.send_bytes(data)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise IncusError(f"websocket write failed: {exc}") from exc

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send_str(text)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise IncusError(f"websocket write failed: {exc}") from exc

    async def receive(self) -> bytes | str | None:
        """The next frame's payload; None once the peer has closed."""
        while True:
            try:
                msg = await self._ws.receive()
            except (aiohttp.ClientError, ConnectionError):
                return None
            if msg.type == aiohttp.WSMsgType.BINARY:
                data: bytes = msg.data
                return data
            if msg.type == aiohttp.WSMsgType.TEXT:
                text: str = msg.data
                return text
            if msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                continue
            return None

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def close(self) -> None:
        await self._ws.close()


class Transport:
    """One aiohttp session, reused for every request; `open` is the only way to make one."""

    def __init__(
        self, session: aiohttp.ClientSession, where: str, endpoint: HttpsEndpoint | None = None
    ) -> None:
        self._session = session
        self.where = where
        self._https = endpoint
        # The last GET /1.0 answer (IncusClient.server_info): one per connection will do for
        # what a one-shot command asks several times.
        self.server_info: Any = None

    @property
    def remote(self) -> bool:
        """Whether incusd is reached over HTTPS (maybe on another machine), not its unix socket."""
        return self._https is not None

    @classmethod
    @asynccontextmanager
    async def open(cls, endpoint: Endpoint) -> AsyncIterator[Transport]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_S)
        connector: aiohttp.BaseConnector
        if isinstance(endpoint, UnixEndpoint):
            connector = aiohttp.UnixConnector(path=str(endpoint.socket), limit=0)
            base_url, where = "http://incus", str(endpoint.socket)
            https = None
        else:
            connector = aiohttp.TCPConnector(ssl=_tls_context(endpoint), limit=0)
            base_url, where = endpoint.url.rstrip("/"), endpoint.url.rstrip("/")
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_S, connect=HANDSHAKE_S)
            https = endpoint
        session = aiohttp.ClientSession(
            connector=connector, base_url=base_url, timeout=timeout, auto_decompress=False
        )
        try:
            yield cls(session, where, https)
        finally:
            await session.close()

    @asynccontextmanager
    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None,
        data: Any,
        headers: Mapping[str, str] | None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self._session.request(method, path, params=params, data=data, headers=headers) as resp:
                yield resp
        except aiohttp.ClientConnectorCertificateError as exc:
            raise await self._certificate_error(exc) from exc
        except aiohttp.ClientConnectorError as exc:
            raise _unavailable(self.where, exc.os_error) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise IncusUnavailableError(
                f"cannot reach incusd at {self.where}: no answer within {HANDSHAKE_S:g}s", hint=REMOTE_HINT
            ) from exc
        except aiohttp.ClientError as exc:
            raise IncusError(f"request {method} {path} to incusd failed: {exc}") from exc

    def _decode(self, method: str, path: str, status: int, raw: bytes) -> SyncResponse | AsyncResponse:
        try:
            return decode_envelope(method, path, status, raw)
        except PermissionDeniedError as exc:
            # incusd's whole answer to a client certificate it does not trust.
            if self._https is None or str(exc) != "not authorized":
                raise
            name = f"remote '{self._https.label}'" if self._https.label else "the server"
            error = classify(
                status, f"{name} ({self.where}) does not trust coi's certificate (not authorized)"
            )
            error.hint = "its trust was removed there? add the remote again with a new token"
            raise error from exc

    async def _certificate_error(self, exc: aiohttp.ClientConnectorCertificateError) -> IncusError:
        """The server's certificate is not the pinned one: which it is now, if it can be told."""
        endpoint = self._https
        if endpoint is None or not endpoint.fingerprint:
            return IncusUnavailableError(f"the TLS certificate of {self.where} was refused: {exc}")
        try:
            now = fingerprint_of_der(await fetch_server_certificate(endpoint.url))
        except IncusError:
            now = "unknown"
        if now == endpoint.fingerprint:
            return IncusUnavailableError(f"the TLS certificate of {self.where} was refused: {exc}")
        name = f"remote '{endpoint.label}'" if endpoint.label else self.where
        return IncusUnavailableError(
            f"the server certificate of {name} ({self.where}) changed: pinned {endpoint.fingerprint}, "
            f"now {now}; refusing to connect",
            hint="if the server's certificate was renewed on purpose, remove the remote and add it "
            "again with a new token",
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: object = None,
        data: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SyncResponse | AsyncResponse:
        """Send one API request and return its envelope; an error envelope raises."""
        hdrs = dict(headers or {})
        if body is not None:
            data = msgspec.json.encode(body)
            hdrs.setdefault("Content-Type", "application/json")
        response = await self._exchange(method, path, params=params, data=data, headers=hdrs)
        return self._decode(method, path, response.status, response.body)

    async def request_raw(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        data: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RawResponse:
        """A request whose success body is not an envelope (file contents); errors still are."""
        return await self._exchange(method, path, params=params, data=data, headers=headers)

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        params: Params | None,
        data: bytes | IO[bytes] | None,
        headers: Mapping[str, str] | None,
    ) -> RawResponse:
        """One request answered; an error envelope raises, a restarting incusd's is waited out."""
        for delay in (*_NOT_READY_DELAYS_S, None):
            async with self._send(method, path, params=params, data=data, headers=headers) as resp:
                response = RawResponse(resp.status, dict(resp.headers), await resp.read())
            can_wait = delay is not None and _resendable(data)
            if not self._not_ready(method, path, response.status, response.body, can_wait=can_wait):
                return response
            await anyio.sleep(delay or 0)
        raise AssertionError("unreachable")

    def _not_ready(self, method: str, path: str, status: int, body: bytes, *, can_wait: bool) -> bool:
        """Whether the answer is a restarting incusd's refusal that the request may wait out; any
        other error envelope raises (as that refusal does when it may not)."""
        if status < 400:
            return False
        try:
            self._decode(method, path, status, body)
        except ServerNotReadyError:
            if not can_wait:
                raise
            return True
        return False

    @asynccontextmanager
    async def download(
        self, path: str, *, params: Params | None = None
    ) -> AsyncIterator[tuple[Mapping[str, str], AsyncIterator[bytes]]]:
        """Stream a response body in chunks, for files too large to hold in memory; a restarting
        incusd's refusal is waited out, as `request` does."""
        for delay in (*_NOT_READY_DELAYS_S, None):
            async with self._send("GET", path, params=params, data=None, headers=None) as resp:
                body = await resp.read() if resp.status >= 400 else b""
                if not self._not_ready("GET", path, resp.status, body, can_wait=delay is not None):
                    yield dict(resp.headers), _chunks(resp, path)
                    return
            await anyio.sleep(delay or 0)

    async def connect_websocket(
        self, path: str, *, params: Params | None = None, answer_pings: bool = False
    ) -> WebSocket:
        """Open a websocket; the caller closes it.

        An exec's streams answer no pings: incusd's pings there need no answer, and a pong
        written after incusd closed its end makes asyncio abort the connection, dropping output
        not yet read. The event stream must (`answer_pings`): incusd pings it every 10 s and
        drops it after three unanswered pings."""
        try:
            # No Origin header: incusd refuses foreign origins, and aiohttp sends none unless asked.
            ws = await self._session.ws_connect(path, params=params, autoping=answer_pings, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            raise classify(exc.status, f"websocket {path} refused: {exc.message}") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise await self._certificate_error(exc) from exc
        except aiohttp.ClientConnectorError as exc:
            raise _unavailable(self.where, exc.os_error) from exc
        except aiohttp.ClientError as exc:
            raise IncusError(f"websocket {path} failed: {exc}") from exc
        return WebSocket(ws)

    @asynccontextmanager
    async def websocket(
        self, path: str, *, params: Params | None = None, answer_pings: bool = False
    ) -> AsyncIterator[WebSocket]:
        ws = await self.connect_websocket(path, params=params, answer_pings=answer_pings)
        try:
            yield ws
        finally:
            await ws.close()


# A restarting incusd refuses every request ("Server isn't ready yet") until its state is loaded,
# which takes seconds; the refusal did nothing, so a request whose body can be sent again waits.
_NOT_READY_DELAYS_S = (0.2, 0.3, 0.5, 0.5, 1.0, 1.0, 1.0, 1.5, 2.0, 2.0)  # 10 s in all


async def _chunks(resp: aiohttp.ClientResponse, path: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_chunked(CHUNK):
            yield chunk
    except aiohttp.ClientError as exc:
        raise IncusError(f"download of {path} failed: {exc}") from exc


def _resendable(data: bytes | IO[bytes] | None) -> bool:
    return data is None or isinstance(data, bytes)


def decode_envelope(method: str, path: str, status: int, raw: bytes) -> SyncResponse | AsyncResponse:
    if not raw.strip() and status >= 400:
        # HEAD answers carry no body: the status is all there is.
        raise classify(status, f"{method} {path}: HTTP {status}")
    try:
        envelope = ENVELOPE_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        text = raw[:200].decode(errors="replace").strip()
        raise IncusError(f"unexpected reply to {method} {path} (HTTP {status}): {text or exc}") from exc
    if isinstance(envelope, ErrorResponse):
        raise classify(envelope.error_code or status, envelope.error)
    return envelope


def _tls_context(endpoint: HttpsEndpoint) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(endpoint.server_cert) if endpoint.server_cert else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(str(endpoint.client_cert), str(endpoint.client_key))
    except (OSError, ssl.SSLError) as exc:
        raise IncusUnavailableError(
            f"cannot load the TLS certificates for {endpoint.url}: {exc}",
            hint="check client.crt, client.key and the server certificate in your Incus config dir",
        ) from exc
    if endpoint.server_cert is not None:
        # Incus certificates name the host as "unspecified" or a DNS name, rarely the address we
        # dial; the pinned certificate is the only trust anchor, which is what the Go client does.
        ctx.check_hostname = False
    return ctx
