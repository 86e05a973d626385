"""The one place where incusd's error text is read: every refusal and failed operation becomes
the most precise `IncusApiError` subclass, so code outside `incus/` tells errors apart by type.

incusd 6.0 reports most conditions only in English prose, and not always with a fitting HTTP
status (a taken instance name is a failed create operation, status 400, from its database layer;
a stop of a stopped instance is a failed operation too). The markers below are the phrases it
really sends, checked against the payloads captured from the daemon in
tests/data/incus_errors.json (by tests/data/capture_incus_errors.py).

incusd quotes the names it embeds (`Failed to fetch instance "x" in project "y"`, `Missing
source path "/a b"`): quoted parts are blanked before matching, so no instance name, project or
path a user chose can look like a marker.
"""

from __future__ import annotations

import re

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
    InstanceNotRunningError,
    InstanceRunningError,
    NotFoundError,
    OperationFailedError,
    OperationTimedOutError,
    PermissionDeniedError,
    ServerNotReadyError,
    SourceFrozenError,
    SourcePathMissingError,
    StopTimedOutError,
)

# (marker, class): the first marker found in the message decides. Order matters where one
# message holds two (a stop whose deadline passed says both "shutting down" and "deadline").
_MARKERS: tuple[tuple[str, type[IncusApiError]], ...] = (
    # 'dial unix /var/lib/incus/containers/x/forkfile.sock: connect: no such file or directory'
    # (seen under load; not provokable on purpose).
    ("forkfile.sock", FileHelperNotReadyError),
    ("Server isn't ready yet", ServerNotReadyError),  # a restarting incusd (HTTP 503)
    # A failed create: 'Failed creating instance record: Add instance info to the database: Failed
    # to create "instances" entry: UNIQUE constraint failed: instances.project_id, instances.name'.
    ("UNIQUE constraint failed", ConflictError),
    ("already exists", ConflictError),
    # 'Failed creating instance record: Instance is busy running a "create" operation', or
    # '... delete operation: Instance is busy running a "start" operation'.
    ("is busy running", InstanceBusyError),
    # 'Failed shutting down instance, status is "Running": context deadline exceeded'.
    ("Failed shutting down instance", StopTimedOutError),
    # 'Create instance from copy: container is already frozen': another copy holds the source.
    ("is already frozen", SourceFrozenError),
    ("already running", AlreadyRunningError),  # 'The instance is already running'
    ("already stopped", AlreadyStoppedError),  # 'The instance is already stopped'
    ("is not running", InstanceNotRunningError),  # 'Instance is not running': an exec when stopped
    ("Instance is running", InstanceRunningError),  # a delete of a running instance
    # 'Failed add validation for device "d": Missing source path "/x" for disk "d"'.
    ("Missing source path", SourcePathMissingError),
    # 'Failed to start device "d": Required idmapping abilities not available' (shift=true).
    ("idmapping abilities", IdmapUnsupportedError),
    # '... Failed initializing instance: Not enough uid/gid available for the container'.
    ("Not enough uid/gid available", IdmapUnsupportedError),
    ("dmapped mount", IdmapUnsupportedError),
    ("shiftfs", IdmapUnsupportedError),
    # 'Failed to fetch instance "x" in project "y": Instance not found' (a missing file is
    # just "Not Found").
    ("Instance not found", InstanceNotFoundError),
    # A /wait long poll whose timeout passed: 'context deadline exceeded'.
    ("deadline exceeded", OperationTimedOutError),
)

# A double-quoted part as Go's %q writes it (backslash escapes inside).
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')

_BY_STATUS: dict[int, type[IncusApiError]] = {
    400: BadRequestError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
}


def classify(status: int, message: str, *, operation_id: str | None = None) -> IncusApiError:
    """The typed error for incusd's answer: a refused request (`operation_id` None, `status` its
    HTTP status) or a failed background operation (its id, `status` its status code)."""
    text = _QUOTED.sub('""', message)
    for marker, cls in _MARKERS:
        if marker in text:
            return cls(status, message, operation_id=operation_id)
    if operation_id is not None:
        return OperationFailedError(status, message, operation_id=operation_id)
    return _BY_STATUS.get(status, IncusApiError)(status, message)
