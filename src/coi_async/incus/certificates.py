"""Trusted client certificates: how a remote coi gets access to an incusd over HTTPS."""

from __future__ import annotations

import base64
import hashlib
import re

import msgspec

from coi_async.errors import CoiError
from coi_async.incus.base import ApiBase
from coi_async.incus.models import Operation
from coi_async.incus.paths import certificate_path

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)


class CertificatesPost(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    certificate: str  # base64 DER, as incusd expects it
    type: str  # required: omit_defaults would drop a default and incusd refuses an empty type
    restricted: bool = False
    projects: list[str] = []


def pem_to_der_b64(pem: str) -> str:
    match = _PEM.search(pem)
    if match is None:
        raise CoiError("not a PEM certificate")
    return "".join(match.group(1).split())


def fingerprint_of(pem: str) -> str:
    """incusd's name for a certificate: the sha256 of its DER bytes."""
    return hashlib.sha256(base64.b64decode(pem_to_der_b64(pem))).hexdigest()


class CertificatesApi(ApiBase):
    async def add_trusted_certificate(self, pem: str, *, name: str, projects: list[str] | None = None) -> str:
        """Trust a client certificate (restricted to `projects` when given); return its fingerprint."""
        request = CertificatesPost(
            name=name,
            type="client",
            certificate=pem_to_der_b64(pem),
            restricted=bool(projects),
            projects=projects or [],
        )
        await self._transport.request("POST", "/1.0/certificates", body=request)
        return fingerprint_of(pem)

    async def create_trust_token(self, name: str, *, projects: list[str] | None = None) -> tuple[str, str]:
        """A trust token for a client called `name` (restricted to `projects` when given), as
        `incus config trust add NAME` makes one: (the token, its operation's id)."""
        body: dict[str, object] = {"name": name, "type": "client", "token": True}
        if projects:
            body.update(restricted=True, projects=projects)
        response = await self._transport.request("POST", "/1.0/certificates", body=body)
        op = msgspec.json.decode(response.metadata, type=Operation)
        meta = op.metadata or {}
        token = {
            "client_name": name,
            "fingerprint": meta.get("fingerprint", ""),
            "addresses": meta.get("addresses", []),
            "secret": meta.get("secret", ""),
            "expires_at": meta.get("expires_at", "0001-01-01T00:00:00Z"),
        }
        return base64.b64encode(msgspec.json.encode(token)).decode(), op.id

    async def revoke_trust_token(self, operation: str) -> None:
        """Withdraw a token not used yet (a used one's operation is gone: NotFoundError)."""
        await self._transport.request("DELETE", f"/1.0/operations/{operation}")

    async def trust_with_token(self, token: str) -> None:
        """Have the server trust this connection's client certificate, with a trust token."""
        await self._transport.request(
            "POST", "/1.0/certificates", body={"type": "client", "trust_token": token}
        )

    async def delete_certificate(self, fingerprint: str) -> None:
        await self._transport.request("DELETE", certificate_path(fingerprint))
