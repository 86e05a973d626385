"""slots: allocation order and --slot validation."""

from __future__ import annotations

import pytest

from coi_async.errors import NoFreeSlotError, UsageError
from coi_async.slots import Candidate, Occupant, candidates, first_free_slot, validate_slot


@pytest.mark.parametrize("slot", [0, -1, 11, 1000])
def test_explicit_slot_out_of_range_is_a_usage_error(slot: int) -> None:
    with pytest.raises(UsageError) as caught:
        validate_slot(slot, max_slots=10)
    assert caught.value.exit_code == 2
    assert "between 1 and 10" in str(caught.value)


def test_explicit_slot_in_range() -> None:
    assert validate_slot(1, max_slots=10) == 1
    assert validate_slot(10, max_slots=10) == 10


def test_free_slots_in_order_skipping_every_existing_one() -> None:
    occ = [
        Occupant(slot=1, running=True, persistent=False),
        Occupant(slot=2, running=False, persistent=False),  # leftover: may hold unsaved data
        Occupant(slot=4, running=True, persistent=True),
    ]
    assert [c.slot for c in candidates(occ, max_slots=6, persistent=False)] == [3, 5, 6]


def test_stopped_persistent_container_is_reused_by_its_own_slot_first() -> None:
    occ = [
        Occupant(slot=1, running=True, persistent=True),
        Occupant(slot=3, running=False, persistent=True),
    ]
    got = candidates(occ, max_slots=4, persistent=True)
    assert got[0] == Candidate(slot=3, reuse=True)
    assert [c.slot for c in got[1:]] == [2, 4]
    # An ephemeral session never takes over a persistent container.
    assert [c.slot for c in candidates(occ, max_slots=4, persistent=False)] == [2, 4]


def test_start_wraps_around() -> None:
    assert [c.slot for c in candidates([], max_slots=4, persistent=False, start=3)] == [3, 4, 1, 2]


def test_all_taken() -> None:
    occ = [Occupant(slot=s, running=True, persistent=False) for s in range(1, 4)]
    with pytest.raises(NoFreeSlotError, match="all 3 slots are in use"):
        candidates(occ, max_slots=3, persistent=True)
    with pytest.raises(NoFreeSlotError):
        first_free_slot([1, 2, 3], max_slots=3)
    assert first_free_slot([1, 3], max_slots=3) == 2
