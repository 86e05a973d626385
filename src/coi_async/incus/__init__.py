"""The async Incus REST client. Nothing here knows about coi sessions."""

from coi_async.incus.client import IncusClient
from coi_async.incus.endpoint import HttpsEndpoint, UnixEndpoint, resolve_socket
from coi_async.incus.exec import ExecResult
from coi_async.incus.files import FileContent, FileInfo

__all__ = [
    "ExecResult",
    "FileContent",
    "FileInfo",
    "HttpsEndpoint",
    "IncusClient",
    "UnixEndpoint",
    "resolve_socket",
]
