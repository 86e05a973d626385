"""The progress protocol: orchestration reports what happens as typed events, the CLI alone
turns them into words, tables and progress bars (and `coi events --format json` will stream the
same structs).

An `Emit` is a synchronous callable: rendering one line or one table row is cheap, and the
core never waits on its audience. Every event has a stable `type` tag and stable field names;
add fields with defaults, never rename. `Note.kind` values are stable identifiers too: the CLI
keeps the sentence for each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec

ItemOutcome = Literal["ok", "failed", "timed-out", "cancelled"]


class StepStarted(msgspec.Struct, frozen=True, kw_only=True, tag="step-started"):
    """An item (a container, an image, a build) entered a step (e.g. "saving", "stopping")."""

    item: str
    step: str
    detail: str = ""


class StepFinished(msgspec.Struct, frozen=True, kw_only=True, tag="step-finished"):
    item: str
    step: str
    seconds: float


class ItemStarted(msgspec.Struct, frozen=True, kw_only=True, tag="item-started"):
    """A fan-out item got its slot and began its work."""

    item: str


class ItemResult(msgspec.Struct, frozen=True, kw_only=True, tag="item-result"):
    """How one item of a fan-out ended; failures are data, never exceptions."""

    item: str
    outcome: ItemOutcome
    duration_s: float
    error: str | None = None
    # What the action wants the user to know about a success (e.g. where data was saved).
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class Output(msgspec.Struct, frozen=True, kw_only=True, tag="output"):
    """Bytes a process printed (a build recipe, a command), passed through as they came."""

    item: str
    data: bytes
    stream: Literal["stdout", "stderr"] = "stdout"


class Note(msgspec.Struct, frozen=True, kw_only=True, tag="note"):
    """Something the user should know: `kind` is a stable identifier, `values` its parameters."""

    kind: str
    item: str = ""
    values: dict[str, str] = msgspec.field(default_factory=dict)
    level: Literal["info", "warning"] = "info"


Event = StepStarted | StepFinished | ItemStarted | ItemResult | Output | Note
Emit = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The `Emit` for callers that show nothing."""
    del event


def note(
    emit: Emit, kind: str, item: str = "", *, level: Literal["info", "warning"] = "info", **values: str
) -> None:
    """Emit a `Note` (shorthand for the many one-off messages of a flow)."""
    emit(Note(kind=kind, item=item, values=values, level=level))
