"""placement: which cluster member a new session goes to (spread, pack, member:NAME, --target)."""

from __future__ import annotations

import pytest

from coi_async.errors import EgressError, UsageError
from coi_async.placement import MemberLoad, check_policy, choose, with_placed

GIB = 1 << 30


def members(
    *sessions: int, free: tuple[int, ...] = (), status: dict[str, str] | None = None
) -> list[MemberLoad]:
    return [
        MemberLoad(
            name=f"m{i}",
            status=(status or {}).get(f"m{i}", "Online"),
            sessions=n,
            free_memory=(free[i - 1] if free else 8) * GIB,
            total_memory=16 * GIB,
        )
        for i, n in enumerate(sessions, 1)
    ]


def test_spread_takes_the_fewest_sessions_then_the_most_free_memory() -> None:
    assert choose("spread", members(2, 1, 3), slot=1) == "m2"
    assert choose("spread", members(1, 1, 3, free=(4, 9, 9)), slot=1) == "m2"
    # Less than a GiB (or a tenth of the memory) apart is a tie, which the slot breaks.
    tied = members(0, 0, free=(8, 8))
    assert [choose("spread", tied, slot=s) for s in (1, 2, 3)] == ["m1", "m2", "m1"]


def test_spread_goes_round_by_slot_when_launches_see_the_same_counts() -> None:
    assert [choose("spread", members(0, 0, 0), slot=s) for s in range(1, 11)] == [
        "m1", "m2", "m3", "m1", "m2", "m3", "m1", "m2", "m3", "m1",
    ]  # fmt: skip
    # One that already sees slot 1 on m1 still picks its own turn.
    assert choose("spread", members(1, 0, 0), slot=2) == "m2"
    assert choose("spread", members(1, 0, 0), slot=3) == "m3"


def test_a_launch_that_loses_slots_counts_them_where_their_winners_put_them() -> None:
    def placed(view: list[MemberLoad], first: int, last: int) -> list[str]:
        """Where a launch with this view puts each slot it tries, losing all but `last`."""
        chosen = []
        for slot in range(first, last + 1):
            chosen.append(choose("spread", view, slot=slot))
            view = list(with_placed(view, chosen[-1]))
        return chosen

    # Seeing nothing yet, it agrees with the winners of slots 1-9 and takes the round's m1.
    assert placed(members(0, 0, 0), 1, 10)[-1] == "m1"
    # A late view whose m3 looks empty (creates on m1 and m2 already listed, m3's not yet)
    # fills m3 up to the others and then goes round again, not onto m3 for every slot.
    assert placed(members(2, 2, 0), 5, 10) == ["m3", "m3", "m1", "m2", "m3", "m1"]


def test_pack_takes_the_busiest_member_with_room() -> None:
    assert choose("pack", members(1, 3, 0), slot=1) == "m2"
    # m2 has no room (less than a tenth free): the next busiest.
    assert choose("pack", members(1, 3, 0, free=(8, 1, 8)), slot=1) == "m1"
    # None has room: spread's choice.
    assert choose("pack", members(1, 3, 0, free=(1, 1, 1)), slot=1) == "m3"


def test_offline_members_are_never_chosen() -> None:
    down = members(0, 5, 5, status={"m1": "Offline"})
    assert choose("spread", down, slot=1) == "m2"
    with pytest.raises(UsageError, match="cluster member 'm1' is offline"):
        choose("spread", down, slot=1, target="m1")
    with pytest.raises(UsageError, match="no cluster member is online"):
        choose("spread", members(0, status={"m1": "Offline"}), slot=1)


def test_a_named_member_must_exist() -> None:
    assert choose("member:m3", members(0, 0, 9), slot=1) == "m3"
    assert choose("pack", members(0, 0, 9), slot=1, target="m1") == "m1"
    with pytest.raises(UsageError, match=r"unknown cluster member 'm9' \(members: m1, m2\)"):
        choose("spread", members(0, 0), slot=1, target="m9")


def test_check_policy() -> None:
    assert check_policy("member:x") == "member:x"
    for bad in ("", "member:", "member: ", "Spread"):
        with pytest.raises(ValueError, match="expected spread, pack or member:NAME"):
            check_policy(bad)


def test_a_session_that_needs_a_member_daemon_goes_only_where_one_runs() -> None:
    view = members(0, 5, 5)
    assert choose("spread", view, slot=1, only={"m2", "m3"}) == "m2"
    assert choose("pack", view, slot=1, only={"m1"}) == "m1"
    with pytest.raises(EgressError, match="cluster member 'm1' runs no coi egress daemon"):
        choose("spread", view, slot=1, target="m1", only={"m2"})
    with pytest.raises(EgressError, match="no online cluster member runs a coi egress daemon"):
        choose("spread", members(0, 0, status={"m2": "Offline"}), slot=1, only={"m2"})
