"""The one place where incusd's error text is read: every refusal and failed operation becomes
the most precise `IncusApiError` subclass, so code outside `incus/` tells errors apart by type.

incusd 6.0 reports most conditions only in English prose, and not always with a fitting HTTP
status (a taken instance name is a 500 from its database layer; a stop of a stopped instance is a
failed operation). The markers below are the phrases it really sends; the payloads they were
checked against are captured from the daemon in tests/data/incus_errors.json.
"""

from __future__ import annotations

from coi_async.errors import (
    AlreadyRunningError,
    AlreadyStoppedError,
    BadRequestError,
    ConflictError,
    FileHelperNotReadyError,
    IdmapUnsupportedError,
    IncusApiError,
    InstanceBusyError,
    InstanceNotFoundError,
    InstanceRunningError,
    NotFoundError,
    OperationFailedError,
    OperationTimedOutError,
    PermissionDeniedError,
    SourcePathMissingError,
    StopTimedOutError,
)

# (marker, class): the first marker found in the message decides. Order matters where one
# message holds two (a stop whose deadline passed says both "shutting down" and "deadline").
_MARKERS: tuple[tuple[str, type[IncusApiError]], ...] = (
    ("forkfile.sock", FileHelperNotReadyError),
    ("already exists", ConflictError),
    ("UNIQUE constraint failed", ConflictError),
    ("is busy running", InstanceBusyError),
    ("Failed shutting down instance", StopTimedOutError),
    ("already running", AlreadyRunningError),
    ("already stopped", AlreadyStoppedError),
    ("Instance is not running", AlreadyStoppedError),
    ("The instance is not running", AlreadyStoppedError),
    ("Instance is running", InstanceRunningError),
    ("Missing source path", SourcePathMissingError),
    ("idmap", IdmapUnsupportedError),
    ("Idmap", IdmapUnsupportedError),
    ("shift", IdmapUnsupportedError),
    ("Instance not found", InstanceNotFoundError),
    ("deadline exceeded", OperationTimedOutError),
)

_BY_STATUS: dict[int, type[IncusApiError]] = {
    400: BadRequestError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
}


def classify(status: int, message: str, *, operation_id: str | None = None) -> IncusApiError:
    """The typed error for incusd's answer: a refused request (`operation_id` None, `status` its
    HTTP status) or a failed background operation (its id, `status` its status code)."""
    for marker, cls in _MARKERS:
        if marker in message:
            return cls(status, message, operation_id=operation_id)
    if operation_id is not None:
        return OperationFailedError(status, message, operation_id=operation_id)
    return _BY_STATUS.get(status, IncusApiError)(status, message)
