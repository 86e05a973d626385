"""`coi events`' stream over several sources (fleet.follow), driven by fakes of incusd; and the
text line each event becomes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import anyio
import msgspec
import pytest

from coi_async.cli.commands.fleet import event_line
from coi_async.config import Config, resolve_config
from coi_async.errors import ConfigError, IncusError
from coi_async.incus import IncusClient
from coi_async.incus.models import Event, Instance
from coi_async.naming import KEY_WORKSPACE
from coi_async.orchestration.fleet import follow
from coi_async.orchestration.fleet.events import FleetEvent, SessionState, session_event
from coi_async.orchestration.fleet.follow import Source, fleet_events
from coi_async.orchestration.retry import Retry


@pytest.fixture
def config() -> Config:
    return resolve_config([], {}, home="/home/someone")


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "_BACKOFF_START_S", 0.01)
    monkeypatch.setattr(follow, "_BACKOFF_MAX_S", 0.02)
    monkeypatch.setattr(follow, "AGENT_POLL_S", 0.01)


def _started(name: str, project: str) -> Event:
    lifecycle = {"action": "instance-started", "source": f"/1.0/instances/{name}?project={project}"}
    return Event(
        type="lifecycle",
        timestamp="t1",
        project=project,
        metadata=msgspec.Raw(msgspec.json.encode(lifecycle)),
    )


class FakeIncus:
    """Just what the stream asks of an IncusClient: one session, one event, then the stream
    stays open (or fails, after `fail_after` events)."""

    def __init__(
        self, container: str, project: str, *, fail_after: int | None = None, silent: bool = False
    ) -> None:
        self.project = project
        self.instance = Instance(name=container, status="Running", config={KEY_WORKSPACE: "/w/app"})
        self.fail_after = fail_after
        self.silent = silent  # never answers a listing

    @asynccontextmanager
    async def events(self, types: Sequence[str] = ()) -> AsyncIterator[AsyncIterator[Event]]:
        async def stream() -> AsyncIterator[Event]:
            yield _started(self.instance.name, self.project)
            if self.fail_after is not None:
                raise IncusError("the event stream from incusd was closed")
            await anyio.sleep_forever()

        yield stream()

    async def list_instances(self, **_: Any) -> list[Instance]:
        if self.silent:
            await anyio.sleep_forever()
        return [self.instance]

    async def get_instance(self, name: str) -> Instance:
        return self.instance


def _source(remote: str, incus: FakeIncus | Exception, *, answer_s: float | None = None) -> Source:
    @asynccontextmanager
    async def connect() -> AsyncIterator[IncusClient]:
        if isinstance(incus, Exception):
            raise incus
        yield cast(IncusClient, incus)

    def make() -> AbstractAsyncContextManager[IncusClient]:
        return connect()

    return Source(remote=remote, connect=make, answer_s=answer_s)


async def _collect(sources: list[Source], config: Config, until_s: float = 0.5) -> list[FleetEvent]:
    seen: list[FleetEvent] = []
    with anyio.move_on_after(until_s):
        async with fleet_events(sources, config) as stream:
            async for event in stream:
                seen.append(event)  # noqa: PERF401 - kept as they come: the stream is cut short
    return seen


async def test_every_source_has_its_resync_and_its_events_name_it(config: Config) -> None:
    prefix = config.container_prefix
    sources = [
        _source("local", FakeIncus(f"{prefix}aaaa0000-1", "p-local")),
        _source("lab", FakeIncus(f"{prefix}bbbb0000-2", "p-lab")),
    ]
    seen = await _collect(sources, config)
    resyncs = {e.remote: e for e in seen if e.type == "resync"}
    assert sorted(resyncs) == ["lab", "local"]
    assert resyncs["lab"].project == "p-lab"
    assert [s.container for s in resyncs["lab"].sessions or []] == [f"{prefix}bbbb0000-2"]
    started = {e.remote: e for e in seen if e.type == "instance-started"}
    assert started["lab"].container == f"{prefix}bbbb0000-2"
    assert started["lab"].slot == 2
    assert started["local"].project == "p-local"
    assert all(e.type != "disconnected" for e in seen)


async def test_a_source_that_fails_is_told_once_and_the_others_go_on(config: Config) -> None:
    prefix = config.container_prefix
    sources = [
        _source("local", FakeIncus(f"{prefix}aaaa0000-1", "p")),
        _source("gone", ConfigError("unknown remote 'gone'")),
    ]
    seen = await _collect(sources, config)
    down = [e for e in seen if e.type == "disconnected"]
    # Retried every few ms all along, told once: the reason stayed the same.
    assert [(e.remote, e.detail) for e in down] == [("gone", "unknown remote 'gone'")]
    assert [e.remote for e in seen if e.type == "resync"] == ["local"]


async def test_a_dropped_stream_is_told_and_followed_by_another_resync(config: Config) -> None:
    prefix = config.container_prefix
    seen = await _collect([_source("lab", FakeIncus(f"{prefix}aaaa0000-1", "p", fail_after=1))], config)
    kinds = [e.type for e in seen]
    assert kinds[:3] == ["resync", "instance-started", "disconnected"]
    assert kinds.count("resync") >= 2  # reconnected, each time with a resync
    # Each drop is news again (a connection was made in between): they alternate.
    ups_and_downs = [k for k in kinds if k in ("resync", "disconnected")]
    assert all(k == ("resync", "disconnected")[i % 2] for i, k in enumerate(ups_and_downs))
    assert {e.remote for e in seen} == {"lab"}


async def test_a_source_that_does_not_answer_in_time_is_told_as_disconnected(config: Config) -> None:
    prefix = config.container_prefix
    sources = [
        _source("local", FakeIncus(f"{prefix}aaaa0000-1", "p")),
        _source("lab", FakeIncus(f"{prefix}bbbb0000-1", "p", silent=True), answer_s=0.05),
    ]
    seen = await _collect(sources, config)
    assert [(e.remote, e.detail) for e in seen if e.type == "disconnected"] == [
        ("lab", "no answer from incusd within 0.05s")
    ]
    assert [e.remote for e in seen if e.type == "resync"] == ["local"]


def test_retry_pauses_grow_and_a_connection_resets_them() -> None:
    retry = Retry(0.5, 10.0)
    assert [retry.next_pause() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert retry.tell("refused")
    assert not retry.tell("refused")
    assert retry.tell("certificate changed")
    retry.succeeded()
    assert retry.next_pause() == 0.5
    assert retry.tell("certificate changed")


def test_session_events_carry_their_remote(config: Config) -> None:
    name = f"{config.container_prefix}aaaa0000-3"
    known = {name: Instance(name=name, config={KEY_WORKSPACE: "/w/app"})}
    found = session_event(_started(name, "p"), config, known, remote="lab")
    assert found is not None
    assert (found.remote, found.container, found.workspace, found.slot, found.project) == (
        "lab",
        name,
        "/w/app",
        3,
        "p",
    )
    assert session_event(_started("someone-else", "p"), config, known, remote="lab") is None


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            FleetEvent(
                type="instance-started", time="T", remote="local", container="coi-a-1", workspace="/w/app"
            ),
            "T instance-started coi-a-1 (app)",
        ),
        (
            FleetEvent(
                type="instance-stopped", time="T", container="coi-a-1", workspace="/w/app", remote="lab"
            ),
            "T [lab] instance-stopped coi-a-1 (app)",
        ),
        (
            FleetEvent(type="disconnected", time="T", remote="local", detail="connection refused"),
            "T disconnected from incusd (connection refused); reconnecting",
        ),
        (
            FleetEvent(type="disconnected", time="T", detail="changed", remote="lab"),
            "T [lab] disconnected from remote 'lab' (changed); reconnecting",
        ),
        (
            FleetEvent(
                type="resync",
                time="T",
                remote="lab",
                sessions=[SessionState(container="c-1", workspace="/w", slot=1, status="Running")],
            ),
            "T [lab] resync: 1 sessions: c-1 (Running)",
        ),
        (
            FleetEvent(
                type="agent-state",
                time="T",
                remote="local",
                container="c-1",
                state="idle",
                previous="working",
            ),
            "T agent c-1: working -> idle",
        ),
        (
            FleetEvent(
                type="egress-refused",
                time="T",
                remote="local",
                container="c-1",
                host="h",
                port=443,
                detail="not allowed",
            ),
            "T egress refused c-1: h:443 (not allowed)",
        ),
    ],
)
def test_event_lines(event: FleetEvent, line: str) -> None:
    assert event_line(event) == line
