"""The pure rules of `coi snapshot`: which names are taken, the default name, ages and the table."""

from __future__ import annotations

import datetime as dt

import pytest

from coi_async.cli.commands.snapshot import human_age, snapshot_table
from coi_async.errors import UsageError
from coi_async.orchestration.containers.snapshots import (
    Snapshot,
    check_existing_name,
    check_snapshot_name,
    default_snapshot_name,
    free_name,
)


@pytest.mark.parametrize("name", ["s", "S1", "before-upgrade", "v1.2_rc-3", "9", "a" * 63])
def test_good_names(name: str) -> None:
    assert check_snapshot_name(name) == name
    assert check_existing_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".hidden", "-flag", "_x", "a/b", "a b", "tab\there", "snäp", "x" * 64, "a\nb", "a:b"],
)
def test_bad_new_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid snapshot name") as caught:
        check_snapshot_name(name)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "a b", "tab\there", "a\nb", "nul\x00"])
def test_bad_existing_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid snapshot name"):
        check_existing_name(name)


@pytest.mark.parametrize("name", ["x" * 70, ".hidden", "snäp", "a:b"])
def test_names_incusd_takes_can_still_be_named(name: str) -> None:
    assert check_existing_name(name) == name


def test_default_name_and_the_next_free_one() -> None:
    base = default_snapshot_name(dt.datetime(2026, 1, 31, 9, 5, 7))
    assert base == "snap-20260131-090507"
    assert check_snapshot_name(base) == base
    assert free_name(base, set()) == base
    assert free_name(base, {base}) == f"{base}-2"
    assert free_name(base, {base, f"{base}-2", f"{base}-3"}) == f"{base}-4"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-3, "0s"),
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h"),
        (86399, "23h"),
        (86400, "1d"),
    ],
)
def test_human_age(seconds: float, shown: str) -> None:
    assert human_age(seconds) == shown


def test_table_aligns_columns_and_shows_unknown_sizes_as_a_dash() -> None:
    now = dt.datetime(2026, 1, 31, 12, 0, 0, tzinfo=dt.UTC)
    rows = snapshot_table(
        [
            Snapshot(name="a", created_at="2026-01-31T11:54:59.123456789Z", size_bytes=None),
            Snapshot(name="longer-name", created_at="2026-01-29T12:00:00Z", size_bytes=12_900_000),
            Snapshot(name="odd", created_at="not a time", size_bytes=0),
        ],
        now,
    )
    assert [row.split()[0] for row in rows] == ["NAME", "a", "longer-name", "odd"]
    assert rows[1].split()[-2:] == ["5m", "-"]
    assert rows[2].split()[-2:] == ["2d", "12.3MB"]
    assert rows[3].split()[-3:] == ["time", "-", "0B"]
    # Every column starts at the same place on every line.
    starts = {row.index(row.split()[1]) for row in rows[:3]}
    assert len(starts) == 1
