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
    """incusd refused a request, or a background operation it ran failed.

    Made only by the classifier in `coi_async.incus.classify`, which picks the most precise
    subclass below from incusd's answer; code outside `incus/` tells errors apart by type alone.
    """

    def __init__(
        self, status: int, message: str, *, operation_id: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        # Set when the error is the end of a background operation rather than a refused request.
        self.operation_id = operation_id


class BadRequestError(IncusApiError):
    """400: the request was refused as invalid (wrong state, bad config, ...)."""


class PermissionDeniedError(IncusApiError):
    """403: the caller may not do this (a restricted project or certificate)."""


class NotFoundError(IncusApiError):
    """404: the instance, image, project, file or operation does not exist."""


class InstanceNotFoundError(NotFoundError):
    """The instance itself does not exist (not a file or an image named in the request)."""


class ConflictError(IncusApiError):
    """The object exists already (for instances: the name is taken)."""


class OperationFailedError(IncusApiError):
    """A background operation ended as Failure or Cancelled, for no reason classified below."""


class InstanceStateError(IncusApiError):
    """The instance is not in a state that allows the request."""


class AlreadyRunningError(InstanceStateError):
    """A start of an instance that runs already."""


class AlreadyStoppedError(InstanceStateError):
    """A stop of an instance that is stopped already (or not running)."""


class InstanceNotRunningError(AlreadyStoppedError):
    """The request needs a running instance (an exec) and it is stopped (incusd: "Instance is
    not running"). An AlreadyStoppedError, so a stop that meets it counts as done."""


class InstanceRunningError(InstanceStateError):
    """The request needs a stopped instance (a delete, a file-less operation) and it runs."""


class InstanceBusyError(InstanceStateError):
    """Another operation on the instance holds it (incusd: "busy running a ... operation")."""


class SourceFrozenError(InstanceStateError):
    """A copy of a running instance found it frozen by another copy of it (storage without
    copy-on-write freezes the source while it copies); the same copy works once that one is done."""


class StopTimedOutError(InstanceStateError):
    """A graceful stop whose timeout passed while the guest kept running."""


class IdmapUnsupportedError(BadRequestError):
    """The host cannot map ids as asked (idmapped mounts with shift, or a raw.idmap range)."""


class SourcePathMissingError(BadRequestError):
    """A disk device names a host path that does not exist."""


class OperationTimedOutError(IncusApiError):
    """incusd gave up waiting on its own side ("context deadline exceeded")."""


class ServerNotReadyError(IncusApiError):
    """incusd is still starting (it refuses every request until its state is loaded); the same
    request works seconds later."""


class FileHelperNotReadyError(IncusApiError):
    """incusd's per-instance file helper was not listening yet; the same request works later."""


class EgressError(CoiError):
    """The egress proxy could not start (e.g. its port is taken) or was misconfigured."""


class EgressDaemonRunningError(EgressError):
    """Another egress daemon already serves the same incusd for this user."""


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


class ArchiveError(CoiError):
    """A tar stream out of a container was refused: malformed, over a limit, or it could not be
    unpacked. Nothing of it was kept: the previous copy is as it was."""


class ArchiveLimitError(ArchiveError):
    """The copy would exceed one of its caps (`cap`: "max_members", "max_file_bytes" or
    "max_total_bytes")."""

    def __init__(self, message: str, *, cap: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.cap = cap


class ReadLimitError(CoiError):
    """What is read from an instance into memory (a file, a command's output) is larger than the
    bound its reader set; nothing past the bound was read."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


def coi_errors(exc: BaseException) -> list[CoiError] | None:
    """The CoiErrors behind `exc`, also from inside (nested) exception groups made only of
    CoiErrors; None when anything else is in there (a bug, or cancellation), which must propagate."""
    if isinstance(exc, CoiError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[CoiError] = []
        for inner in exc.exceptions:
            errors = coi_errors(inner)
            if errors is None:
                return None
            found.extend(errors)
        return found or None
    return None


def coi_error(exc: BaseException) -> CoiError | None:
    """The first CoiError behind `exc` (see `coi_errors`); None for anything else."""
    errors = coi_errors(exc)
    return errors[0] if errors else None
