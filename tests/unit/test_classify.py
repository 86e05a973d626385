"""Every error payload captured from incusd 6.0 (tests/data/incus_errors.json) becomes the class
coi expects, classified exactly the way the client meets it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coi_async import errors
from coi_async.errors import (
    ConflictError,
    FileHelperNotReadyError,
    IdmapUnsupportedError,
    IncusApiError,
    InstanceNotFoundError,
    NotFoundError,
    OperationTimedOutError,
    ServerNotReadyError,
    SourceFrozenError,
    SourcePathMissingError,
    StopTimedOutError,
)
from coi_async.incus.classify import classify
from coi_async.incus.transport import decode_envelope

_DATA = Path(__file__).resolve().parent.parent / "data" / "incus_errors.json"
RECORDS: list[dict[str, Any]] = json.loads(_DATA.read_text())["records"]


def _classified(record: dict[str, Any]) -> IncusApiError:
    """What the client raises for the record: a refusal goes through the envelope decoder, a
    failed operation through `classify` with its id (as `ApiBase.wait_operation` does)."""
    if record["kind"] == "operation":
        return classify(record["status_code"], record["err"], operation_id="op")
    body = b""
    if record["error"]:
        envelope = {"type": "error", "error": record["error"], "error_code": record["error_code"]}
        body = json.dumps(envelope).encode()
    method, path = record["request"]["method"], record["request"]["path"]
    with pytest.raises(IncusApiError) as caught:
        decode_envelope(method, path, record["status"], body)
    return caught.value


@pytest.mark.parametrize("record", RECORDS, ids=[r["case"] for r in RECORDS])
def test_captured_payload_is_classified(record: dict[str, Any]) -> None:
    expected = getattr(errors, record["expect"])
    error = _classified(record)
    assert type(error) is expected, f"{record['case']}: {error!r}"
    assert str(error) == (record.get("error") or record.get("err") or str(error))


_MARKED = [
    r
    for r in RECORDS
    if r.get("wait", {}).get("type") == "error"
    and r["expect"] not in ("OperationFailedError", "BadRequestError")
]


@pytest.mark.parametrize("record", _MARKED, ids=[r["case"] for r in _MARKED])
def test_failed_operations_long_poll_classifies_alike(record: dict[str, Any]) -> None:
    # incusd answers the /wait of a failed operation with an error envelope (HTTP 200, its own
    # error_code): the class must not depend on which of the two the client saw first.
    wait = record["wait"]
    assert type(classify(wait["error_code"], wait["error"])) is getattr(errors, record["expect"])


def test_captures_cover_every_condition_coi_tells_apart() -> None:
    seen = {r["expect"] for r in RECORDS}
    for cls in (
        "InstanceNotFoundError",
        "NotFoundError",
        "AlreadyRunningError",
        "AlreadyStoppedError",
        "InstanceRunningError",
        "InstanceBusyError",
        "StopTimedOutError",
        "ConflictError",
        "SourcePathMissingError",
        "IdmapUnsupportedError",
        "OperationTimedOutError",
        "OperationFailedError",
    ):
        assert cls in seen, cls


def test_missing_file_is_not_a_missing_instance() -> None:
    assert type(classify(404, "Not Found")) is NotFoundError
    missing = classify(404, 'Failed to fetch instance "x" in project "p": Instance not found')
    assert isinstance(missing, InstanceNotFoundError)


def test_a_restarting_member_and_a_frozen_copy_source_seen_on_the_cluster() -> None:
    # Seen in CI: a rerun right after a member's incusd came back, and two forks copying one
    # running container on storage that freezes the source.
    assert isinstance(classify(503, "Server isn't ready yet"), ServerNotReadyError)
    frozen = classify(400, "Create instance from copy: container is already frozen", operation_id="x")
    assert isinstance(frozen, SourceFrozenError)


def test_file_helper_not_ready_seen_under_load() -> None:
    # Seen in CI under load; not provokable on purpose, so not in the captures.
    message = "dial unix /var/lib/incus/containers/p_x/forkfile.sock: connect: no such file or directory"
    assert isinstance(classify(500, message), FileHelperNotReadyError)


def test_stop_timeout_wins_over_deadline() -> None:
    message = 'Failed shutting down instance, status is "Running": context deadline exceeded'
    assert type(classify(400, message, operation_id="op")) is StopTimedOutError
    assert type(classify(500, "context deadline exceeded")) is OperationTimedOutError


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        # Quoted names and paths are the user's: they never decide the class.
        (
            'Failed add validation for device "d": Missing source path "/srv/already exists" for disk "d"',
            SourcePathMissingError,
        ),
        (
            'Failed to fetch instance "x" in project "Instance is running": Instance not found',
            InstanceNotFoundError,
        ),
        ('Failed to start device "idmap": Required idmapping abilities not available', IdmapUnsupportedError),
        ('Project "UNIQUE constraint failed" already exists', ConflictError),
    ],
)
def test_quoted_names_never_look_like_markers(message: str, cls: type[IncusApiError]) -> None:
    assert type(classify(500, message)) is cls


def test_unknown_refusal_falls_back_on_the_status() -> None:
    assert type(classify(404, "Image alias not found")) is NotFoundError
    assert type(classify(409, "taken")) is ConflictError
    assert type(classify(500, "boom")) is IncusApiError
