"""The one bounded fan-out every bulk command uses.

`run_bulk` applies an action to every name in one anyio task group. A `CapacityLimiter` bounds
how many items do work at once, and each item's deadline starts only once it holds a slot, so
queueing is not charged to it. An item's failure (a `CoiError`, also in an exception group from
a task group of its own, or its deadline passing) is recorded as data and never cancels the
others; anything else is a bug and propagates.

Progress goes out as events (`events.ItemStarted`, `events.StepStarted`, `events.ItemResult`);
the results are `events.ItemResult`s too, collected in one `BulkReport`.

Cancellation (Ctrl-C) cancels the group. Items still queued or still preparing are recorded as
cancelled and were not touched. An item that has entered `ctx.committed()` (it has started to
change the container, e.g. stopping it) runs that block shielded, within a bound of its own; it
can watch `ctx.interrupted` to finish faster (a graceful stop turning into a forced one).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import anyio
import msgspec

from coi_async.errors import CoiError, coi_error
from coi_async.orchestration import events
from coi_async.orchestration.events import Emit, ItemOutcome, ItemResult, ItemStarted, StepStarted


class BulkReport(msgspec.Struct, kw_only=True):
    """Every item's result (in the order they ended), the run's wall time, and whether it was
    interrupted."""

    results: list[ItemResult] = msgspec.field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def succeeded(self) -> list[ItemResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if r.outcome in ("failed", "timed-out")]

    @property
    def cancelled(self) -> list[ItemResult]:
        return [r for r in self.results if r.outcome == "cancelled"]


class ItemContext:
    """What an action may do besides its own work: report steps, commit, yield its slot."""

    def __init__(
        self,
        name: str,
        *,
        limiter: anyio.CapacityLimiter,
        finish_limiter: anyio.CapacityLimiter,
        deadline: anyio.CancelScope,
        interrupted: anyio.Event,
        emit: Emit,
    ) -> None:
        self.name = name
        self.interrupted = interrupted
        self._limiter = limiter
        self._finish_limiter = finish_limiter
        # The limiter whose slot this item holds, if any.
        self.held: anyio.CapacityLimiter | None = None
        self._deadline = deadline
        self._emit = emit
        self.detail: str | None = None

    def step(self, step: str, detail: str = "") -> None:
        """Emit `StepStarted` for this item; `step` is a stable identifier the CLI renders."""
        self._emit(StepStarted(item=self.name, step=step, detail=detail))

    @contextmanager
    def committed(self, bound_s: float) -> Iterator[None]:
        """From here on the item finishes even if the run is cancelled, within `bound_s` seconds.

        Entering lifts the item's own deadline (the one that started when it got its slot): a
        block that started to change something is not cut short by it. The block is shielded
        from the run's cancellation; only its own bound ends it. When `bound_s` passes, the
        block is cancelled where it is (which can leave its work half done) and the item is
        recorded as failed with the error "did not finish within <bound_s>s", not as timed out.
        """
        self._deadline.deadline = math.inf
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(bound_s):
                yield
        except TimeoutError:
            raise CoiError(f"did not finish within {bound_s:g}s") from None

    @asynccontextmanager
    async def released(self) -> AsyncIterator[None]:
        """Give the slot back while waiting on something that costs nothing here (a guest's
        shutdown); afterwards take a slot of the finishing pool, which is as large as the first
        but separate, so finishing items never queue behind items that have not started."""
        if self.held is not None:
            self.held.release_on_behalf_of(self)
            self.held = None
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish_limiter.acquire_on_behalf_of(self)
            self.held = self._finish_limiter

    async def hand_over(self) -> None:
        """Move from the first pool to the finishing one: the next item can start its first
        steps while this one finishes, so the two phases overlap instead of queueing."""
        if self.held is self._finish_limiter:
            return
        async with self.released():
            pass


Action = Callable[[ItemContext], Awaitable[None]]


async def run_bulk(
    names: Sequence[str],
    action: Action,
    *,
    limit: int,
    per_item_s: float,
    emit: Emit = events.ignore,
    report: BulkReport | None = None,
) -> BulkReport:
    """Apply `action` to every name, at most `limit` at once; never raises for an item's failure.

    Emits `ItemStarted` when an item gets its slot, the action's `StepStarted`s, and one
    `ItemResult` per item (also for items cancelled before they started). Pass your own
    `report` to see the results so far when the run is cancelled (the runner re-raises the
    cancellation after recording every unfinished item as cancelled).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    out = report if report is not None else BulkReport()
    limiter = anyio.CapacityLimiter(limit)
    finish_limiter = anyio.CapacityLimiter(limit)
    interrupted = anyio.Event()
    began = time.monotonic()

    def record(result: ItemResult) -> None:
        out.results.append(result)
        emit(result)

    async def one(name: str) -> None:
        queued = time.monotonic()
        start = queued
        deadline = anyio.CancelScope()
        ctx = ItemContext(
            name,
            limiter=limiter,
            finish_limiter=finish_limiter,
            deadline=deadline,
            interrupted=interrupted,
            emit=emit,
        )
        acquired = False
        try:
            await limiter.acquire_on_behalf_of(ctx)
            ctx.held = limiter
            acquired = True
            start = time.monotonic()
            emit(ItemStarted(item=name))
            deadline.deadline = anyio.current_time() + per_item_s
            with deadline:
                await action(ctx)
            if deadline.cancelled_caught:
                record(_result(name, "timed-out", start, f"no result after {per_item_s:g}s"))
            else:
                record(_result(name, "ok", start, None, ctx.detail))
        except TimeoutError:
            record(_result(name, "timed-out", start, "did not finish in time"))
        except Exception as exc:  # a CoiError, also from the action's own task group
            error = coi_error(exc)
            if error is None:
                raise
            record(_result(name, "failed", start, _message(error)))
        except anyio.get_cancelled_exc_class():
            record(_result(name, "cancelled", start if acquired else queued, "interrupted"))
            raise
        finally:
            if ctx.held is not None:
                ctx.held.release_on_behalf_of(ctx)
                ctx.held = None

    async def watch(scope: anyio.CancelScope) -> None:
        # Sees the run being cancelled from outside, so committed items can hurry up.
        with scope:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                if not scope.cancel_called:
                    interrupted.set()
                    out.interrupted = True
                raise

    try:
        async with anyio.create_task_group() as outer:
            watcher = anyio.CancelScope()
            outer.start_soon(watch, watcher)
            async with anyio.create_task_group() as tg:
                for name in names:
                    tg.start_soon(one, name, name=f"bulk:{name}")
            watcher.cancel()
    finally:
        out.elapsed_s = time.monotonic() - began
    return out


def _result(
    name: str, outcome: ItemOutcome, start: float, error: str | None, detail: str | None = None
) -> ItemResult:
    return ItemResult(
        item=name, outcome=outcome, duration_s=round(time.monotonic() - start, 3), error=error, detail=detail
    )


def _message(exc: CoiError) -> str:
    # incusd's bulk messages span lines; a report line must not.
    return " ".join(str(exc).split())
