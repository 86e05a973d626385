"""Helpers that run while a block of code runs, and go with it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio


@asynccontextmanager
async def in_background(*tasks: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run `tasks` while the body runs; they are cancelled when it ends. The tasks must not fail
    on their own: an error of the body goes on as it was raised, not inside an exception group."""
    try:
        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(task)
            yield
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
