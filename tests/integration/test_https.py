"""The client over HTTPS with a client certificate, against this machine's incusd on loopback."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coi_async.errors import IncusApiError
from coi_async.incus import HttpsEndpoint, IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost
from tests.helpers import BUSYBOX_IMAGE

pytestmark = pytest.mark.incus

# Only ever loopback. Set once when the server listens nowhere yet, and left on: another test run
# on this machine may be using it at the same moment.
LOOPBACK_ADDRESS = "127.0.0.1:18443"
SERVER_CERT = Path("/var/lib/incus/server.crt")


def make_client_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "client.crt", directory / "client.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=coi-test",
         "-addext", "extendedKeyUsage=clientAuth"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def loopback_url(incus: IncusClient) -> str:
    """This machine's incusd over HTTPS on loopback (listening there from now on if it did not)."""
    address = str((await incus.server_info()).config.get("core.https_address", ""))
    if not address:
        await incus.update_server_config({"core.https_address": LOOPBACK_ADDRESS})
        address = LOOPBACK_ADDRESS
    host, _, port = address.rpartition(":")
    if host in ("", "[::]", "0.0.0.0"):
        host = "127.0.0.1"
    assert host in ("127.0.0.1", "[::1]", "localhost"), f"only loopback is a test target: {address}"
    return f"https://{host}:{port}"


@pytest.fixture
async def https_endpoint(incus: IncusClient, tmp_path: Path) -> AsyncIterator[HttpsEndpoint]:
    url = await loopback_url(incus)
    cert, key = make_client_cert(tmp_path)
    fingerprint = await incus.add_trusted_certificate(
        cert.read_text(), name=f"coi-test-{secrets.token_hex(3)}", projects=[incus.project]
    )
    try:
        yield HttpsEndpoint(url, client_cert=cert, client_key=key, server_cert=SERVER_CERT)
    finally:
        await incus.delete_certificate(fingerprint)


async def test_https_with_client_certificate(
    https_endpoint: HttpsEndpoint, incus: IncusClient, unique: str
) -> None:
    name = f"{unique}-tls"
    async with IncusClient.connect(https_endpoint, project=incus.project) as remote:
        assert (await remote.server_info()).auth == "trusted"
        await remote.create_instance(
            InstancesPost(name=name, source=InstanceSource(type="image", alias=BUSYBOX_IMAGE), start=True)
        )
        try:
            # Exec's websockets travel over the same TLS connection settings.
            result = await remote.exec(name, ["sh", "-c", "cat; echo -n err >&2"], stdin=b"over tls")
            assert (result.exit_code, result.stdout, result.stderr) == (0, b"over tls", b"err")
        finally:
            await remote.stop_instance(name, force=True)
            await remote.delete_instance(name)
        # The certificate is restricted to the test project.
        with pytest.raises(IncusApiError):
            await remote.in_project("default").list_instances()
