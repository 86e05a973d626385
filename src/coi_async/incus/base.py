"""What every resource API of the client shares: the project, typed decoding, and operation waits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import msgspec

from coi_async.errors import (
    IncusApiError,
    IncusError,
    InstanceNotFoundError,
    NotFoundError,
    OperationTimedOutError,
)
from coi_async.incus.classify import classify
from coi_async.incus.models import (
    STATUS_CANCELLED,
    AsyncResponse,
    Operation,
    SyncResponse,
)
from coi_async.incus.transport import Transport

T = TypeVar("T")

# How long one `/wait` long poll may block: short enough that the client checks in regularly,
# long enough that a slow operation costs few requests.
WAIT_POLL_S = 10


def decode(raw: msgspec.Raw, type_: type[T], *, what: str) -> T:
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise IncusError(f"unexpected {what} from incusd: {exc}") from exc


class ApiBase:
    """Holds the transport and the project every request is scoped to."""

    def __init__(self, transport: Transport, *, project: str = "default") -> None:
        self._transport = transport
        self.project = project

    @property
    def transport(self) -> Transport:
        return self._transport

    def _params(self, extra: Mapping[str, str] | None = None, *, scoped: bool = True) -> dict[str, str]:
        params = dict(extra or {})
        if scoped and "all-projects" not in params:
            params.setdefault("project", self.project)
        return params

    async def _call(
        self, method: str, path: str, *, body: object = None, params: Mapping[str, str] | None = None
    ) -> SyncResponse | AsyncResponse:
        return await self._transport.request(method, path, params=self._params(params), body=body)

    async def _get(
        self, path: str, type_: type[T], *, params: Mapping[str, str] | None = None, what: str
    ) -> T:
        envelope = await self._call("GET", path, params=params)
        return decode(envelope.metadata, type_, what=what)

    async def _run(
        self, method: str, path: str, *, body: object = None, params: Mapping[str, str] | None = None
    ) -> Operation | None:
        """Send a request and, if incusd made it a background operation, wait for its end."""
        envelope = await self._call(method, path, body=body, params=params)
        if isinstance(envelope, AsyncResponse):
            return await self.wait_operation(envelope.operation)
        return None

    async def wait_operation(self, operation: str) -> Operation:
        """Wait for an operation to end; raise `OperationFailedError` unless it succeeded.

        incusd forgets an operation 5 s after it ends, so callers must come here at once; the
        long poll then sees the end no matter how soon it happens.
        """
        op = await self._wait(operation)
        if op.status_code >= 400:
            failure = "cancelled" if op.status_code == STATUS_CANCELLED else op.err or op.status
            raise classify(op.status_code, failure, operation_id=op.id)
        return op

    async def _wait(self, operation: str) -> Operation:
        path = operation.split("?", 1)[0]
        if not path.startswith("/1.0/operations/"):
            path = f"/1.0/operations/{path}"
        while True:
            try:
                op = await self._get(
                    f"{path}/wait", Operation, params={"timeout": str(WAIT_POLL_S)}, what="operation"
                )
            except IncusApiError as exc:
                # A failed operation's /wait answers with an error envelope (HTTP 200, its own
                # error_code) and no metadata; the operation itself (kept 5 s) still has it, e.g.
                # the exit code of an exec. Only "Operation not found" means there is none: an
                # operation that failed because its instance vanished is read like any other.
                if isinstance(exc, NotFoundError) and not isinstance(exc, InstanceNotFoundError):
                    raise
                try:
                    op = await self._get(path, Operation, what="operation")
                except IncusApiError:
                    raise classify(exc.status, str(exc), operation_id=path.rsplit("/", 1)[-1]) from exc
                if not op.done:
                    # incusd 6.0 answers a long poll whose timeout passed with an error envelope
                    # ("context deadline exceeded") instead of the still-running operation.
                    if isinstance(exc, OperationTimedOutError):
                        continue
                    raise
            if op.done:
                return op
