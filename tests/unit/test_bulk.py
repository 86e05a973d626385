"""The bulk runner, driven by plain async fakes (no incusd)."""

from __future__ import annotations

import time

import anyio
import pytest

from coi_async.errors import CoiError, NotFoundError
from coi_async.orchestration.events import Event, ItemResult, ItemStarted, StepStarted
from coi_async.orchestration.runner import BulkReport, ItemContext, run_bulk


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, ItemStarted):
            self.events.append(("started", event.item))
        elif isinstance(event, StepStarted):
            self.events.append((event.step, event.item))
        elif isinstance(event, ItemResult):
            self.events.append((f"finished:{event.outcome}", event.item))


async def test_failures_are_data_and_do_not_cancel_siblings() -> None:
    async def action(ctx: ItemContext) -> None:
        if ctx.name == "b":
            raise NotFoundError(404, "Instance not found")
        if ctx.name == "c":
            await anyio.sleep_forever()
        ctx.detail = f"done {ctx.name}"

    report = await run_bulk(["a", "b", "c", "d"], action, limit=2, per_item_s=0.3)
    assert sorted(r.item for r in report.succeeded) == ["a", "d"]
    by_name = {r.item: r for r in report.results}
    assert by_name["b"].outcome == "failed"
    assert by_name["b"].error == "Instance not found"
    assert by_name["c"].outcome == "timed-out"
    assert by_name["a"].detail == "done a"
    assert {r.item for r in report.failed} == {"b", "c"}


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


async def test_an_error_from_an_action_s_own_task_group_is_its_failure() -> None:
    async def action(ctx: ItemContext) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 0)
            if ctx.name == "b":
                raise CoiError("cannot start tmux session")

    report = await run_bulk(["a", "b"], action, limit=2, per_item_s=5)
    by_name = {r.item: r for r in report.results}
    assert by_name["a"].outcome == "ok"
    assert (by_name["b"].outcome, by_name["b"].error) == ("failed", "cannot start tmux session")


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
        await run_bulk(names, action, limit=3, per_item_s=10, emit=rec, report=report)
    assert time.monotonic() - start < 1.5  # committed items saw the interruption and hurried
    assert sorted(finished_cleanup) == ["commit-1", "commit-2"]
    assert sorted(hurried) == ["commit-1", "commit-2"]
    assert report.interrupted
    outcomes = {r.item: r.outcome for r in report.results}
    assert outcomes == {
        "commit-1": "ok",
        "commit-2": "ok",
        "prep-1": "cancelled",
        "queued-1": "cancelled",
        "queued-2": "cancelled",
    }
    assert ("started", "queued-1") not in rec.events
    assert ("started", "commit-1") in rec.events
    assert ("finished:cancelled", "queued-1") in rec.events


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


async def test_steps_are_events_of_their_item() -> None:
    rec = Recorder()

    async def action(ctx: ItemContext) -> None:
        ctx.step("saving")
        ctx.step("saved", "/tmp/x")

    await run_bulk(["a"], action, limit=1, per_item_s=1, emit=rec)
    assert rec.events == [("started", "a"), ("saving", "a"), ("saved", "a"), ("finished:ok", "a")]


def test_report_json_keeps_its_shape() -> None:
    from coi_async.cli.bulk_view import report_json

    report = BulkReport(
        results=[
            ItemResult(item="a", outcome="ok", duration_s=1.5, detail="/s/a"),
            ItemResult(item="b", outcome="failed", duration_s=0.25, error="boom"),
        ],
        elapsed_s=2.0,
    )
    assert report_json(report, command="kill") == (
        "{\n"
        '  "command": "kill",\n'
        '  "results": [\n'
        "    {\n"
        '      "name": "a",\n'
        '      "outcome": "ok",\n'
        '      "duration_s": 1.5,\n'
        '      "error": null,\n'
        '      "session_dir": "/s/a"\n'
        "    },\n"
        "    {\n"
        '      "name": "b",\n'
        '      "outcome": "failed",\n'
        '      "duration_s": 0.25,\n'
        '      "error": "boom"\n'
        "    }\n"
        "  ],\n"
        '  "succeeded": 1,\n'
        '  "failed": 1,\n'
        '  "cancelled": 0,\n'
        '  "elapsed_s": 2.0,\n'
        '  "interrupted": false\n'
        "}"
    )


def test_line_view_writes_the_contract_lines_per_item() -> None:
    import io

    from coi_async.cli.bulk_view import LineReporter, shutdown_verb
    from coi_async.orchestration.bulk import lifecycle as lc

    out = io.StringIO()
    view = LineReporter(shutdown_verb(60), out)
    view(ItemStarted(item="c-1"))
    view(StepStarted(item="c-1", step=lc.SAVING))
    view(StepStarted(item="c-1", step=lc.SAVED, detail="/s/x"))
    view(StepStarted(item="c-1", step=lc.STOPPING, detail="60"))
    view(StepStarted(item="c-1", step=lc.FORCE_STOPPING, detail="timeout"))
    view(StepStarted(item="c-1", step=lc.DELETING))
    view(ItemResult(item="c-1", outcome="ok", duration_s=1.0))
    view(ItemResult(item="c-2", outcome="cancelled", duration_s=0.0, error="interrupted"))
    view(ItemStarted(item="c-3"))
    view(ItemResult(item="c-3", outcome="failed", duration_s=0.1, error="boom"))
    assert out.getvalue() == (
        "Shutting down container c-1 (timeout: 60s)...\n"
        "  Session data saved to /s/x\n"
        "  Attempting graceful shutdown...\n"
        "  Timeout reached, force-killing...\n"
        "  ✓ Shutdown c-1\n"
        "Shutting down container c-3 (timeout: 60s)...\n"
        "  ✗ Failed to shutdown c-3: boom\n"
    )
