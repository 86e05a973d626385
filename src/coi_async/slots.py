"""Which slot a new session takes. Pure policy over what exists; no I/O.

Choosing a slot is only a guess: incusd is the lock. The caller tries the candidates in order by
creating the instance under each name, and a name conflict moves it on to the next one.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from coi_async.errors import NoFreeSlotError, UsageError


class Occupant(msgspec.Struct, frozen=True, kw_only=True):
    """An existing container in one of the workspace's slots."""

    slot: int
    running: bool
    persistent: bool


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    slot: int
    # True: a stopped persistent container of this workspace lives here; start it, don't create.
    reuse: bool = False


def validate_slot(slot: int, *, max_slots: int) -> int:
    """An explicit `--slot`: 1..max_slots, anything else is a usage error."""
    if slot < 1 or slot > max_slots:
        raise UsageError(f"invalid slot {slot}: must be between 1 and {max_slots}")
    return slot


def candidates(
    occupants: Iterable[Occupant],
    *,
    max_slots: int,
    persistent: bool,
    start: int = 1,
) -> list[Candidate]:
    """Slots to try, best first, for a new session of this workspace.

    When the session is persistent, a stopped persistent container comes first and is reused by
    its own slot (the reference skipped it and made a fresh one, losing its installed state).
    Then come the free slots from `start` upwards, wrapping around to 1. Running containers and
    stopped ephemeral leftovers (their session data may not be saved yet) are never candidates.
    Raises NoFreeSlotError when nothing is left.
    """
    taken = {o.slot: o for o in occupants if 1 <= o.slot <= max_slots}
    order = [*range(max(start, 1), max_slots + 1), *range(1, min(max(start, 1), max_slots + 1))]
    reusable = [
        Candidate(slot=s, reuse=True)
        for s in order
        if persistent and s in taken and taken[s].persistent and not taken[s].running
    ]
    free = [Candidate(slot=s) for s in order if s not in taken]
    found = reusable + free
    if not found:
        raise NoFreeSlotError(max_slots)
    return found


def first_free_slot(taken: Iterable[int], *, max_slots: int) -> int:
    """The lowest slot in 1..max_slots not in `taken`."""
    free = set(range(1, max_slots + 1)).difference(taken)
    if not free:
        raise NoFreeSlotError(max_slots)
    return min(free)
