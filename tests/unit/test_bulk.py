"""The bulk runner, driven by plain async fakes (no incusd)."""

from __future__ import annotations

import time

import anyio
import pytest

from coi_async.errors import CoiError, NotFoundError
from coi_async.orchestration.runner import BulkReport, ItemContext, ItemResult, run_bulk


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def started(self, name: str) -> None:
        self.events.append(("started", name))

    def step(self, name: str, state: str, detail: str = "") -> None:
        self.events.append((state, name))

    def finished(self, result: ItemResult) -> None:
        self.events.append((f"finished:{result.outcome}", result.name))


async def test_failures_are_data_and_do_not_cancel_siblings() -> None:
    async def action(ctx: ItemContext) -> None:
        if ctx.name == "b":
            raise NotFoundError(404, "Instance not found")
        if ctx.name == "c":
            await anyio.sleep_forever()
        ctx.detail = f"done {ctx.name}"

    report = await run_bulk(["a", "b", "c", "d"], action, limit=2, per_item_s=0.3)
    assert sorted(r.name for r in report.succeeded) == ["a", "d"]
    by_name = {r.name: r for r in report.results}
    assert by_name["b"].outcome == "failed"
    assert by_name["b"].error == "Instance not found"
    assert by_name["c"].outcome == "timed-out"
    assert by_name["a"].detail == "done a"
    assert {r.name for r in report.failed} == {"b", "c"}


async def test_limit_bounds_concurrency_and_queueing_is_not_charged() -> None:
    running = 0
    peak = 0

    async def action(ctx: ItemContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.1)
        running -= 1

    # 6 items at 2 at once take ~0.3 s; each has only 0.25 s, which would fail if queueing counted.
    report = await run_bulk([str(i) for i in range(6)], action, limit=2, per_item_s=0.25)
    assert peak == 2
    assert len(report.succeeded) == 6
    assert all(r.duration_s < 0.25 for r in report.results)


async def test_released_slot_lets_others_work_while_waiting() -> None:
    async def action(ctx: ItemContext) -> None:
        async with ctx.released():
            await anyio.sleep(0.3)

    start = time.monotonic()
    report = await run_bulk([str(i) for i in range(8)], action, limit=1, per_item_s=5)
    assert len(report.succeeded) == 8
    assert time.monotonic() - start < 1.0  # not 8 x 0.3 s


async def test_bugs_propagate() -> None:
    async def action(ctx: ItemContext) -> None:
        raise ValueError("a bug")

    with pytest.raises(ExceptionGroup):
        await run_bulk(["a"], action, limit=1, per_item_s=1)


async def test_cancel_finishes_committed_items_and_marks_the_rest() -> None:
    finished_cleanup: list[str] = []
    hurried: list[str] = []
    rec = Recorder()

    async def action(ctx: ItemContext) -> None:
        if ctx.name.startswith("commit"):
            with ctx.committed(5):
                with anyio.move_on_after(2):
                    await ctx.interrupted.wait()
                    hurried.append(ctx.name)
                await anyio.sleep(0.1)
                finished_cleanup.append(ctx.name)
        else:
            await anyio.sleep_forever()

    report = BulkReport()
    names = ["commit-1", "commit-2", "prep-1", "queued-1", "queued-2"]
    start = time.monotonic()
    with anyio.move_on_after(0.2):
        await run_bulk(names, action, limit=3, per_item_s=10, reporter=rec, report=report)
    assert time.monotonic() - start < 1.5  # committed items saw the interruption and hurried
    assert sorted(finished_cleanup) == ["commit-1", "commit-2"]
    assert sorted(hurried) == ["commit-1", "commit-2"]
    assert report.interrupted
    outcomes = {r.name: r.outcome for r in report.results}
    assert outcomes == {
        "commit-1": "ok",
        "commit-2": "ok",
        "prep-1": "cancelled",
        "queued-1": "cancelled",
        "queued-2": "cancelled",
    }
    assert ("started", "queued-1") not in rec.events


async def test_committed_block_is_bounded() -> None:
    async def action(ctx: ItemContext) -> None:
        with ctx.committed(0.2):
            await anyio.sleep(5)

    report = await run_bulk(["a"], action, limit=1, per_item_s=0.1)
    [result] = report.results
    assert result.outcome == "failed"
    assert result.error == "did not finish within 0.2s"


async def test_multiline_errors_become_one_line() -> None:
    async def action(ctx: ItemContext) -> None:
        raise CoiError("The following instances failed:\n - Instance: a: boom\n")

    report = await run_bulk(["a"], action, limit=1, per_item_s=1)
    assert report.results[0].error == "The following instances failed: - Instance: a: boom"


async def test_invalid_limit() -> None:
    async def action(ctx: ItemContext) -> None:
        pass

    with pytest.raises(ValueError, match="limit"):
        await run_bulk(["a"], action, limit=0, per_item_s=1)


async def test_finishing_items_do_not_queue_behind_unstarted_ones() -> None:
    order: list[str] = []

    async def action(ctx: ItemContext) -> None:
        await anyio.sleep(0.05)  # "saving", one at a time
        with ctx.committed(5):
            async with ctx.released():
                await anyio.sleep(0.01)  # "waiting on the guest"
            order.append(f"done {ctx.name}")

    await run_bulk([str(i) for i in range(6)], action, limit=1, per_item_s=5)
    # Item 0 finished long before the last item even started saving.
    assert order.index("done 0") < 3
