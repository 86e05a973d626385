"""The remote side of the `coi remote` tests: this machine's incusd on loopback HTTPS as "the
remote", trust tokens made through the local socket, and the clean-up of every certificate a
test had trusted, whatever happened."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
from pathlib import Path

import anyio

from coi_async.errors import CoiError
from coi_async.incus.certificates import fingerprint_of
from tests.coi_cli import Run
from tests.integration.shell_harness import ShellWorld
from tests.integration.test_https import SERVER_CERT

PREFIX = "h13r-"

REMOTE = "test"


def server_fingerprint() -> str:
    return fingerprint_of(SERVER_CERT.read_text())


class Remotes:
    """A ShellWorld's remote side: tokens made through the local socket, and clean-up."""

    def __init__(self, world: ShellWorld, url: str) -> None:
        self.world = world
        self.url = url
        self.operations: list[str] = []

    @property
    def config_dir(self) -> Path:
        return self.world.home / ".config" / "coi"

    async def token(self, project: str = "") -> str:
        """A trust token for `project` (default: the world's), revoked by `clean` if unused."""
        token, operation = await self.world.incus.create_trust_token(
            f"coi-test-{self.world.prefix}{os.getpid()}", projects=[project or self.world.project]
        )
        self.operations.append(operation)
        return token

    async def add(self, name: str = REMOTE, *, project: str = "") -> Run:
        """`coi remote add NAME`, with `project` as the remote's own when given."""
        chosen = ("--project", project) if project else ()
        token = await self.token(project)
        return await self.world.run(*chosen, "remote", "add", name, self.url, "--token", token)

    async def clean(self) -> None:
        with anyio.CancelScope(shield=True):
            local = self.world.incus
            for operation in self.operations:
                with contextlib.suppress(CoiError):
                    await local.revoke_trust_token(operation)
            cert = self.config_dir / "client.crt"
            if cert.exists():
                with contextlib.suppress(CoiError):
                    await local.delete_certificate(fingerprint_of(cert.read_text()))


def server_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1, as incusd's own is."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "silent")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    cert_path, key_path = directory / "silent.crt", directory / "silent.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path
