"""Trusted client certificates: how a remote coi gets access to an incusd over HTTPS."""

from __future__ import annotations

import base64
import hashlib
import re

import msgspec

from coi_async.errors import CoiError
from coi_async.incus.base import ApiBase
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

    async def delete_certificate(self, fingerprint: str) -> None:
        await self._transport.request("DELETE", certificate_path(fingerprint))
