"""The one exception tree of coi-async.

Every error a user can cause or meet is a `CoiError`: its `str()` is the sentence shown to the user,
`hint` says what to do next, and `exit_code` is what the process exits with. Nothing here imports
the rest of the package, so every layer can raise these.
"""

from __future__ import annotations


class CoiError(Exception):
    """Base of every user-facing error."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(CoiError):
    """A bad argument, flag value or flag combination."""

    exit_code = 2


class ConfigError(CoiError):
    """A malformed or contradictory configuration file, variable or flag."""

    exit_code = 2


class IncusError(CoiError):
    """Anything that went wrong while talking to incusd."""


class IncusUnavailableError(IncusError):
    """The socket is missing, refuses connections, or may not be opened by this user."""

    exit_code = 3


class IncusApiError(IncusError):
    """incusd answered with an error envelope."""

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class BadRequestError(IncusApiError):
    """400: the request was refused as invalid (wrong state, bad config, ...)."""


class PermissionDeniedError(IncusApiError):
    """403: the caller may not do this (a restricted project or certificate)."""


class NotFoundError(IncusApiError):
    """404: the instance, image, project or operation does not exist."""


class ConflictError(IncusApiError):
    """409: the object exists already (for instances: the name is taken)."""


class OperationFailedError(IncusError):
    """A background operation ended as Failure or Cancelled."""

    def __init__(self, operation_id: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.operation_id = operation_id


class EgressError(CoiError):
    """The egress proxy could not start (e.g. its port is taken) or was misconfigured."""


class SessionError(CoiError):
    """Domain errors about coi sessions, slots and saved session data."""


class SessionNotFoundError(SessionError):
    """No saved session (or no session container) of that id or name."""


class NoFreeSlotError(SessionError):
    """Every slot of the workspace is taken."""

    def __init__(self, max_slots: int) -> None:
        super().__init__(
            f"all {max_slots} slots are in use",
            hint="stop a session with 'coi shutdown' or raise defaults.max_slots",
        )
        self.max_slots = max_slots


class BuildError(CoiError):
    """An image build failed: the base, the recipe, or publishing."""


_NAME_TAKEN_MARKERS = ("already exists", "UNIQUE constraint failed")


def name_taken(message: str) -> bool:
    """Whether incusd's message says an object of that name exists already."""
    return any(marker in message for marker in _NAME_TAKEN_MARKERS)


def api_error(status: int, message: str) -> IncusApiError:
    """The precise `IncusApiError` for an HTTP status from incusd."""
    # incusd 6.0 reports a taken instance name as a 500 from its database layer, not a 409.
    if name_taken(message):
        return ConflictError(status, message)
    cls: type[IncusApiError] = {
        400: BadRequestError,
        403: PermissionDeniedError,
        404: NotFoundError,
        409: ConflictError,
    }.get(status, IncusApiError)
    return cls(status, message)
