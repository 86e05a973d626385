from __future__ import annotations

import errno

import msgspec
import pytest

from coi_async.errors import (
    BadRequestError,
    ConflictError,
    IncusApiError,
    IncusError,
    NotFoundError,
    PermissionDeniedError,
)
from coi_async.incus.classify import classify
from coi_async.incus.models import StatePut
from coi_async.incus.transport import _unavailable, decode_envelope


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (500, IncusApiError),
    ],
)
def test_api_error_classes(status: int, cls: type[IncusApiError]) -> None:
    error = classify(status, "boom")
    assert type(error) is cls
    assert error.status == status
    assert str(error) == "boom"


def test_taken_name_reported_as_500_is_a_conflict() -> None:
    error = classify(500, 'Failed to create "instances" entry: UNIQUE constraint failed: instances.name')
    assert isinstance(error, ConflictError)


def test_error_envelope_raises_with_server_message() -> None:
    raw = b'{"type":"error","error":"Instance not found","error_code":404,"metadata":null}'
    with pytest.raises(NotFoundError, match="Instance not found"):
        decode_envelope("GET", "/1.0/instances/x", 404, raw)


def test_non_json_reply_is_an_incus_error() -> None:
    with pytest.raises(IncusError, match="HTTP 502"):
        decode_envelope("GET", "/1.0", 502, b"<html>bad gateway</html>")


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.ENOENT, "no socket at /s"),
        (errno.EACCES, "permission denied"),
        (errno.ECONNREFUSED, "connection refused"),
    ],
)
def test_socket_errors_name_the_cause_and_a_next_step(code: int, text: str) -> None:
    error = _unavailable("/s", OSError(code, "x"))
    assert text in str(error)
    assert error.hint
    assert error.exit_code == 3


def test_graceful_stop_never_sends_timeout_zero() -> None:
    # incusd reads "timeout": 0 as "kill now".
    assert msgspec.json.encode(StatePut(action="stop")) == b'{"action":"stop"}'
    assert b'"timeout":30' in msgspec.json.encode(StatePut(action="stop", timeout=30))
