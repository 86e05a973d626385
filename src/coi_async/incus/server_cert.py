"""A remote's server certificate, before coi trusts it: fetched with a TLS 1.3 handshake that
trusts anything (`coi remote add` shows its fingerprint, checks it against the token's and pins
it), and named by its sha256, as Incus names certificates. No aiohttp here: one bounded
handshake on a plain anyio stream.
"""

from __future__ import annotations

import errno
import hashlib
import ssl
from urllib.parse import urlsplit

import anyio
from anyio.streams.tls import TLSAttribute

from coi_async.errors import IncusError, IncusUnavailableError

# Every connection to a remote has its TCP connect and TLS handshake bounded: an address that
# drops packets, or a server that accepts and never answers, is an error, not a hang.
CONNECT_S = 10.0
HANDSHAKE_S = 10.0
REMOTE_HINT = "check that the server is up and that its core.https_address listens there"


def split_url(url: str) -> tuple[str, int]:
    """The host and port of an `https://HOST[:PORT]` URL (port 8443 when not given)."""
    try:
        parts = urlsplit(url)
        port = parts.port or 8443
    except ValueError as exc:
        raise IncusError(f"not a remote URL: {url!r} ({exc})") from exc
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise IncusError(f"not a remote URL: {url!r} (expected https://HOST[:PORT])")
    return parts.hostname, port


def fingerprint_of_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


async def fetch_server_certificate(url: str, *, within_s: float = HANDSHAKE_S) -> bytes:
    """The DER certificate the server at `url` presents, from a TLS 1.3 handshake that trusts
    anything (the caller shows its fingerprint and pins it); bounded by `within_s`."""
    host, port = split_url(url)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with anyio.fail_after(within_s):
            stream = await anyio.connect_tcp(
                host, port, tls=True, ssl_context=ctx, tls_standard_compatible=False
            )
            try:
                der = stream.extra(TLSAttribute.peer_certificate_binary)
            finally:
                await stream.aclose()
    except TimeoutError as exc:
        raise IncusUnavailableError(
            f"cannot reach incusd at {url}: no TLS handshake within {within_s:g}s", hint=REMOTE_HINT
        ) from exc
    except ssl.SSLError as exc:
        raise IncusUnavailableError(
            f"cannot reach incusd at {url}: TLS handshake failed ({exc.reason or exc})",
            hint="the server must speak TLS 1.3",
        ) from exc
    except OSError as exc:
        raise _unreachable(url, exc) from exc
    if not der:
        raise IncusUnavailableError(f"cannot reach incusd at {url}: the server sent no certificate")
    return der


def _unreachable(url: str, exc: OSError) -> IncusUnavailableError:
    # anyio's "All connection attempts failed" carries the last attempt's error below it.
    cause = exc.__cause__ if exc.errno is None and isinstance(exc.__cause__, OSError) else exc
    reason = "connection refused" if cause.errno == errno.ECONNREFUSED else cause.strerror or str(cause)
    return IncusUnavailableError(f"cannot reach incusd at {url}: {reason}", hint=REMOTE_HINT)
