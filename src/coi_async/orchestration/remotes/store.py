"""What coi keeps of its remotes in the user's config dir (`$XDG_CONFIG_HOME/coi`, ~/.config/coi):

- `remotes.json`: each remote's URL and pinned server fingerprint, and the `switch`ed default;
- `servercerts/NAME.crt`: each remote's server certificate, the only trust anchor for it;
- `client.crt` / `client.key`: coi's own client certificate, made on first use (an ECDSA P-384
  key, as Incus's own client makes), which each remote's trust token admits.

Everything is 0600 in 0700 directories from its first byte: the key is a credential, and the
certificates decide whom coi talks to.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import msgspec

from coi_async.config import display_path
from coi_async.errors import ConfigError
from coi_async.incus.endpoint import HttpsEndpoint
from coi_async.remotes import Remote, RemoteStore

STORE_FILE = "remotes.json"
CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"


def config_dir(env: Mapping[str, str] | None = None, home: str | None = None) -> Path:
    environ = os.environ if env is None else env
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(home or str(Path.home()), ".config")
    return Path(base) / "coi"


def _shown(path: Path) -> str:
    return display_path(str(path), str(Path.home()))


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A file of coi's config dir that cannot be written is one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write {_shown(path)}: {exc.strerror or exc}") from exc


def load(directory: Path | None = None) -> RemoteStore:
    path = (directory or config_dir()) / STORE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return RemoteStore()
    except OSError as exc:
        raise ConfigError(f"cannot read {_shown(path)}: {exc.strerror}") from exc
    try:
        return msgspec.json.decode(data, type=RemoteStore)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{_shown(path)} is not coi's list of remotes: {exc}") from exc


def save(store: RemoteStore, directory: Path | None = None) -> None:
    from coi_async.hostfs import make_private_dir, write_atomically

    directory = directory or config_dir()
    with _writing(directory / STORE_FILE):
        make_private_dir(directory)
        write_atomically(
            directory / STORE_FILE, msgspec.json.format(msgspec.json.encode(store), indent=2) + b"\n"
        )


def server_cert_path(name: str, directory: Path | None = None) -> Path:
    return (directory or config_dir()) / "servercerts" / f"{name}.crt"


def save_server_cert(name: str, pem: str, directory: Path | None = None) -> Path:
    from coi_async.hostfs import make_private_dir, write_atomically

    path = server_cert_path(name, directory)
    with _writing(path):
        make_private_dir(path.parent)
        write_atomically(path, pem.encode())
    return path


def forget_server_cert(name: str, directory: Path | None = None) -> None:
    path = server_cert_path(name, directory)
    with _writing(path):
        path.unlink(missing_ok=True)


def client_certificate(directory: Path | None = None) -> tuple[Path, Path]:
    """coi's client certificate and key, made (0600) the first time they are asked for."""
    directory = directory or config_dir()
    cert, key = directory / CLIENT_CERT, directory / CLIENT_KEY
    if cert.exists() and key.exists():
        return cert, key
    from coi_async.hostfs import make_private_dir, write_atomically

    cert_pem, key_pem = _make_certificate()
    with _writing(key):
        make_private_dir(directory)
        write_atomically(key, key_pem)
        write_atomically(cert, cert_pem)
    return cert, key


def _make_certificate() -> tuple[bytes, bytes]:
    """A self-signed client certificate, valid ten years, as `incus` makes its own."""
    import socket

    # Imported here: only `coi remote add` ever makes a certificate.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    user = os.environ.get("USER") or str(os.getuid())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "coi"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{user}@{socket.gethostname()}"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def endpoint(name: str, remote: Remote, directory: Path | None = None) -> HttpsEndpoint:
    """How to reach a stored remote: coi's client certificate, the remote's pinned one."""
    directory = directory or config_dir()
    cert, key = directory / CLIENT_CERT, directory / CLIENT_KEY
    server = server_cert_path(name, directory)
    for path in (cert, key, server):
        if not path.exists():
            raise ConfigError(
                f"remote '{name}': {_shown(path)} is missing",
                hint=f"remove the remote and add it again ('coi remote remove {name}', 'coi remote add')",
            )
    return HttpsEndpoint(
        remote.url,
        client_cert=cert,
        client_key=key,
        server_cert=server,
        label=name,
        fingerprint=remote.fingerprint,
    )
