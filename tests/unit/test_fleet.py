"""The pure parts of the fleet view: limit values, CPU from two samples, ordering, event sources."""

from __future__ import annotations

import pytest

from coi_async.config import resolve_config
from coi_async.errors import UsageError
from coi_async.incus.models import Instance, InstanceCpu, InstanceMemory, InstanceState
from coi_async.orchestration.fleet.events import _instance_of
from coi_async.orchestration.fleet.limits import cpu_limit, memory_limit
from coi_async.orchestration.fleet.snapshot import Sample, ordered, rows


@pytest.mark.parametrize(("given", "value"), [("1", "1"), ("16", "16"), ("none", "")])
def test_cpu_limits(given: str, value: str) -> None:
    assert cpu_limit(given) == value


@pytest.mark.parametrize("given", ["0", "-1", "1.5", "two", "0-3", ""])
def test_bad_cpu_limits(given: str) -> None:
    with pytest.raises(UsageError, match="invalid --cpu"):
        cpu_limit(given)


@pytest.mark.parametrize(
    ("given", "value"), [("512MiB", "512MiB"), ("2GB", "2GB"), ("50%", "50%"), ("none", "")]
)
def test_memory_limits(given: str, value: str) -> None:
    assert memory_limit(given) == value


@pytest.mark.parametrize("given", ["512", "lots", "0MiB", "101%", "1 GiB", "2gb"])
def test_bad_memory_limits(given: str) -> None:
    with pytest.raises(UsageError, match="invalid --memory"):
        memory_limit(given)


def _instance(name: str, cpu_ns: int, memory: int, *, running: bool = True) -> Instance:
    return Instance(
        name=name,
        status="Running" if running else "Stopped",
        config={"user.coi.workspace": "/w/proj"},
        state=InstanceState(cpu=InstanceCpu(usage=cpu_ns), memory=InstanceMemory(usage=memory)),
    )


def test_cpu_is_the_share_of_one_cpu_between_two_samples_and_stopped_ones_have_exited() -> None:
    config = resolve_config([], {}, home="/home/someone")
    prefix = config.container_prefix
    before = Sample(taken=10.0, instances=(_instance(f"{prefix}aaaa0000-1", 1_000_000_000, 5),))
    after = Sample(
        taken=12.0,
        instances=(
            _instance(f"{prefix}aaaa0000-1", 2_000_000_000, 7),
            _instance(f"{prefix}aaaa0000-2", 0, 9, running=False),
            _instance("not-a-session", 0, 1),
        ),
    )
    found = {r.container: r for r in rows(after, before, config)}
    assert sorted(found) == [f"{prefix}aaaa0000-1", f"{prefix}aaaa0000-2"]
    assert found[f"{prefix}aaaa0000-1"].cpu_percent == 50.0
    assert found[f"{prefix}aaaa0000-2"].agent_state == "exited"
    assert found[f"{prefix}aaaa0000-2"].memory_bytes == 0
    assert ordered(list(found.values()), "memory")[0].container == f"{prefix}aaaa0000-1"
    assert ordered(list(found.values()), "name", workspace="/elsewhere") == []
    assert rows(after, None, config)[0].cpu_percent is None


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("/1.0/instances/coi-x-1", ("coi-x-1", "")),
        ("/1.0/instances/coi-x-1?project=p1", ("coi-x-1", "p1")),
        ("/1.0/instances/coi-x-1/snapshots/s", ("coi-x-1", "")),
        ("/1.0/images/abc", ("", "")),
    ],
)
def test_event_sources(source: str, expected: tuple[str, str]) -> None:
    assert _instance_of(source) == expected
