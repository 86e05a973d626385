"""How bulk commands show progress: the contract's lines, a live rich table, or JSON.

Both views are an `events.Emit`: they take the runner's events (`ItemStarted`, `StepStarted`
with lifecycle's step ids, `ItemResult`) and turn them into words.

- Not a terminal: each container's lines (as the reference printed them) come out as one block
  when that container is done, so concurrent work never interleaves mid-block.
- A terminal: a live table (done/total, each container's state and time), then a summary.
- `--format json`: nothing while running; one result per container at the end on stdout.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from coi_async.orchestration.bulk import lifecycle as lc
from coi_async.orchestration.events import Event, ItemResult, ItemStarted, StepStarted
from coi_async.orchestration.runner import BulkReport

if TYPE_CHECKING:
    from rich.console import RenderableType


class Verb(msgspec.Struct, frozen=True, kw_only=True):
    """The wording of one bulk command."""

    started: str  # "Shutting down container {name} (timeout: 60s)..."
    done: str  # "  ✓ Shutdown {name}"
    failed: str  # "  ✗ Failed to shutdown {name}: {error}"
    live: str  # "Shutting down" (the live table's title)
    found: str  # "container(s)" (what the list before the question names)
    prompt: str  # "\nShutdown all these containers? [y/N]: "


def _verb(started: str, done: str, failing: str, live: str, found: str, prompt: str) -> Verb:
    """A Verb from its fields in order, `failing` completing "Failed to ...": failures read alike."""
    failed = f"  ✗ Failed to {failing} {{name}}: {{error}}"
    return Verb(started=started, done=done, failed=failed, live=live, found=found, prompt=prompt)


def shutdown_verb(timeout_s: int) -> Verb:
    return _verb(
        f"Shutting down container {{name}} (timeout: {timeout_s}s)...",
        "  ✓ Shutdown {name}",
        "shutdown",
        "Shutting down",
        "container(s)",
        "\nShutdown all these containers? [y/N]: ",
    )


KILL = _verb(
    "Killing container {name}...",
    "  ✓ Killed {name}",
    "kill",
    "Killing",
    "container(s)",
    "\nKill all these containers? [y/N]: ",
)
CLEAN_CONTAINERS = _verb(
    "Deleting container {name}...",
    "",
    "delete",
    "Deleting containers",
    "stopped container(s)",
    "\nDelete these containers? [y/N]: ",
)
CLEAN_SESSIONS = _verb(
    "Deleting session {name}...",
    "",
    "delete session",
    "Deleting sessions",
    "session(s)",
    "\nDelete all session data? [y/N]: ",
)


def step_line(state: str, detail: str) -> str | None:
    """The contract's line for a step, if it has one."""
    if state == lc.SAVED:
        return f"  Session data saved to {detail}"
    if state == lc.SAVE_SKIPPED:
        return f"  Left out of the saved data (special files, or names or links leading outside): {detail}"
    if state == lc.NO_SESSION_DATA:
        return f"  No {detail} directory found in container"
    if state == lc.STOPPING:
        return "  Attempting graceful shutdown..."
    if state == lc.STOPPED:
        return "  Graceful shutdown successful"
    if state == lc.FORCE_STOPPING:
        return {
            "timeout": "  Timeout reached, force-killing...",
            "interrupted": "  Interrupted, force-stopping...",
        }.get(detail)
    if state == lc.STOPPED_DURING_TIMEOUT:
        return "  Container stopped during timeout"
    return None


def _state_label(state: str, detail: str) -> str:
    return {
        lc.SAVING: "saving session",
        lc.SAVED: "session saved",
        lc.NO_SESSION_DATA: "no session data",
        lc.STOPPING: f"stopping (up to {detail}s)",
        lc.STOPPED: "stopped",
        lc.FORCE_STOPPING: "force-stopping",
        lc.STOPPED_DURING_TIMEOUT: "stopped",
        lc.DELETING: "deleting",
    }.get(state, state)


class LineReporter:
    """Non-terminal output: each item's block of lines, written when the item is done."""

    def __init__(self, verb: Verb, out: TextIO) -> None:
        self._verb = verb
        self._out = out
        self._lines: dict[str, list[str]] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, ItemStarted):
            self._lines[event.item] = [self._verb.started.format(name=event.item)]
        elif isinstance(event, StepStarted):
            line = step_line(event.step, event.detail)
            if line is not None:
                self._lines.setdefault(event.item, []).append(line)
        elif isinstance(event, ItemResult):
            self._finished(event)

    def _finished(self, result: ItemResult) -> None:
        lines = self._lines.pop(result.item, None)
        if result.outcome == "cancelled" and lines is None:
            return  # never started: reported in the summary
        lines = lines or [self._verb.started.format(name=result.item)]
        if result.ok:
            if self._verb.done:
                lines.append(self._verb.done.format(name=result.item))
        elif result.outcome == "cancelled":
            lines.append("  Interrupted before anything was changed")
        else:
            lines.append(self._verb.failed.format(name=result.item, error=result.error))
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()


class _Row:
    __slots__ = ("began", "ended", "error", "state")

    def __init__(self) -> None:
        self.state = "queued"
        self.began: float | None = None
        self.ended: float | None = None
        self.error: str | None = None


class LiveTable:
    """Terminal output: a table kept current by the runner's events, redrawn by rich."""

    def __init__(self, verb: Verb, names: Sequence[str]) -> None:
        self._verb = verb
        self._rows = {name: _Row() for name in names}
        self._began = time.monotonic()
        self._lock = threading.Lock()  # rich redraws from its own thread

    def __call__(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, ItemStarted):
                row = self._rows.setdefault(event.item, _Row())
                row.state, row.began = "started", time.monotonic()
            elif isinstance(event, StepStarted):
                self._rows.setdefault(event.item, _Row()).state = _state_label(event.step, event.detail)
            elif isinstance(event, ItemResult):
                row = self._rows.setdefault(event.item, _Row())
                row.ended = time.monotonic()
                row.state = {"ok": "done", "cancelled": "not touched"}.get(event.outcome, event.outcome)
                row.error = event.error if not event.ok and event.outcome != "cancelled" else None

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        with self._lock:
            rows = list(self._rows.items())
        done = sum(1 for _, r in rows if r.ended is not None)
        failed = sum(1 for _, r in rows if r.error is not None)
        title = f"{self._verb.live}: {done}/{len(rows)} done"
        if failed:
            title += f", {failed} failed"
        title += f"  [{now - self._began:.1f}s]"
        table = Table(expand=False, box=None, pad_edge=False)
        table.add_column("container")
        table.add_column("state")
        table.add_column("time", justify="right")
        for name, row in rows:
            if row.began is None:
                elapsed = ""
            else:
                elapsed = f"{(row.ended or now) - row.began:.1f}s"
            if row.error is not None:
                state = f"[red]✗ {row.error}[/]"
            elif row.state == "done":
                state = "[green]✓ done[/]"
            else:
                state = row.state
            table.add_row(name, state, elapsed)
        # The title on a line of its own: as a table title it would wrap to the table's width.
        return Group(Text(title, style="bold"), table)


@contextmanager
def live_view(table: LiveTable | None) -> Iterator[None]:
    """Keep `table` on screen while the block runs (nothing without a table)."""
    if table is None:
        yield
        return
    from rich.console import Console
    from rich.live import Live

    console = Console(highlight=False)
    with Live(table, console=console, refresh_per_second=8, transient=False):
        yield


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def report_json(report: BulkReport, *, command: str) -> str:
    """The `--format json` document; its field names are a contract, mapped here one by one."""
    results: list[dict[str, Any]] = [
        {"name": r.item, "outcome": r.outcome, "duration_s": r.duration_s, "error": r.error}
        | ({"session_dir": r.detail} if r.detail else {})
        for r in report.results
    ]
    doc = {
        "command": command,
        "results": results,
        "succeeded": len(report.succeeded),
        "failed": len(report.failed),
        "cancelled": len(report.cancelled),
        "elapsed_s": round(report.elapsed_s, 3),
        "interrupted": report.interrupted,
    }
    return msgspec.json.format(msgspec.json.encode(doc), indent=2).decode()


def failure_summary(report: BulkReport, echo: Callable[[str], None]) -> None:
    failed = report.failed
    if failed:
        echo(f"\n{len(failed)} of {len(report.results)} failed:")
        for r in failed:
            echo(f"  ✗ {r.item}: {r.error}")
    untouched = report.cancelled
    if untouched:
        names = ", ".join(r.item for r in untouched)
        echo(f"\nInterrupted: {len(untouched)} left as they were ({names}); run the command again to finish.")


def write(stream: TextIO, text: str) -> None:
    stream.write(text)
    stream.flush()


def stdout() -> TextIO:
    return sys.stdout
