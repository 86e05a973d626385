"""`absorbing_coi_errors`: the flows' "try it, and carry on if incusd said no"."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from coi_async.errors import CoiError, coi_error


@contextlib.contextmanager
def absorbing_coi_errors() -> Iterator[list[CoiError]]:
    """Like `suppress(CoiError)`, but also for exception groups of them; keeps what it caught.

    Anything else (a bug, cancellation) propagates.
    """
    caught: list[CoiError] = []
    try:
        yield caught
    except Exception as exc:
        error = coi_error(exc)
        if error is None:
            raise
        caught.append(error)
