"""The session store on local disk, and the atomic directory swap used by saves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coi_async.errors import SessionNotFoundError, UsageError
from coi_async.naming import workspace_hash
from coi_async.orchestration.sessions.archive import install_directory, recover_directory
from coi_async.orchestration.sessions.store import (
    SessionMetadata,
    SessionStore,
    check_session_id,
    decode_metadata,
    new_session_id,
    now_rfc3339,
    parse_time,
)


def make(store: SessionStore, meta: SessionMetadata, *, data: bool = True) -> None:
    store.save_metadata(meta)
    if data:
        (store.session_dir(meta.session_id) / ".claude").mkdir()


def test_metadata_round_trip_is_real_json(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    sid = new_session_id()
    ws = '/home/u/we"ird\\path'
    meta = SessionMetadata(
        session_id=sid, container_name="coi-1234abcd-1", workspace=ws, saved_at=now_rfc3339()
    )
    path = store.save_metadata(meta)
    loaded = json.loads(path.read_text())
    assert loaded["workspace"] == ws
    assert loaded["persistent"] is False
    assert store.load_metadata(sid) == meta
    assert not list(path.parent.glob("*.tmp"))
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"


def test_reads_the_reference_files(tmp_path: Path) -> None:
    # What the reference's tests write (json.dump, indent=2, microseconds and Z) ...
    py = {
        "session_id": "s",
        "container_name": "coi-1234abcd-2",
        "persistent": True,
        "workspace": "/w",
        "saved_at": "2026-01-31T12:00:00.123456Z",
    }
    meta = decode_metadata(json.dumps(py, indent=2).encode())
    assert meta is not None
    assert meta.persistent
    assert meta.container_name == "coi-1234abcd-2"
    assert parse_time(meta.saved_at) is not None
    # ... and what its hand-written formatter produced for a path with a quote (invalid JSON).
    hand = (
        b'{\n  "session_id": "abc",\n  "container_name": "coi-1234abcd-1",\n  "persistent": false,\n'
        b'  "workspace": "/tmp/a"b",\n  "saved_at": "2026-01-31T12:00:00+01:00"\n}\n'
    )
    meta = decode_metadata(hand)
    assert meta is not None
    assert (meta.session_id, meta.workspace, meta.persistent) == ("abc", '/tmp/a"b', False)
    assert decode_metadata(b"garbage") is None


@pytest.mark.parametrize(
    "bad",
    [
        "../etc",
        "x",
        "",
        "1B4E28BA-2FA1-11D2-883F-0016D3CCA427",
        "a/b",
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427/..",
        ".",
    ],
)
def test_session_ids_are_uuid_shaped(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError):
        check_session_id(bad)
    with pytest.raises(UsageError):
        SessionStore(tmp_path).session_dir(bad)


def test_require_and_list(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    sid = new_session_id()
    with pytest.raises(SessionNotFoundError, match="coi list --all"):
        store.require(sid)
    make(store, SessionMetadata(session_id=sid, saved_at="2026-01-01T00:00:00Z"), data=False)
    with pytest.raises(SessionNotFoundError):
        store.require(sid)  # metadata only: nothing to resume
    (store.session_dir(sid) / ".claude").mkdir()
    assert store.require(sid).id == sid
    (tmp_path / "not-a-session").mkdir()
    assert [s.id for s in store.list_sessions()] == [sid]
    assert SessionStore(tmp_path / "missing").list_sessions() == []


def test_latest_for_workspace(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    ws, other = "/home/u/proj", "/home/u/other"
    h = workspace_hash(ws)
    ids = [new_session_id() for _ in range(5)]
    make(store, SessionMetadata(session_id=ids[0], workspace=ws, saved_at="2026-01-01T10:00:00Z"))
    make(store, SessionMetadata(session_id=ids[1], workspace=ws, saved_at="2026-01-01T12:00:00+01:00"))
    make(store, SessionMetadata(session_id=ids[2], workspace=other, saved_at="2026-01-02T00:00:00Z"))
    # A reference file without a workspace: matched by the hash in its container name.
    make(
        store,
        SessionMetadata(session_id=ids[3], container_name=f"coi-{h}-2", saved_at="2026-01-01T10:30:00Z"),
    )
    # Newest of all but without data: not resumable.
    make(store, SessionMetadata(session_id=ids[4], workspace=ws, saved_at="2026-02-01T00:00:00Z"), data=False)
    latest = store.latest_for_workspace(ws, prefix="coi-")
    assert latest is not None
    assert latest.id == ids[1]
    store.save_metadata(
        SessionMetadata(session_id=ids[3], container_name=f"coi-{h}-2", saved_at="2026-01-01T11:30:00Z")
    )
    latest = store.latest_for_workspace(ws, prefix="coi-")
    assert latest is not None
    assert latest.id == ids[3]
    assert store.latest_for_workspace("/nowhere", prefix="coi-") is None
    overall = store.latest()
    assert overall is not None
    assert overall.id == ids[2]
    assert [s.id for s in store.for_container(f"coi-{h}-2")] == [ids[3]]


def test_install_directory_swaps(tmp_path: Path) -> None:
    target = tmp_path / ".claude"
    staging = tmp_path / ".claude.new-1"
    staging.mkdir()
    (staging / "f").write_text("one")
    install_directory(staging, target)
    assert (target / "f").read_text() == "one"
    assert not staging.exists()
    staging.mkdir()
    (staging / "f").write_text("two")
    install_directory(staging, target)
    assert (target / "f").read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == [".claude"]


def test_recover_after_a_crash_between_renames(tmp_path: Path) -> None:
    target = tmp_path / ".claude"
    aside = tmp_path / ".claude.old-ab"
    aside.mkdir()
    (aside / "f").write_text("good")
    (tmp_path / ".claude.new-cd").mkdir()  # a half-pulled copy
    recover_directory(target)
    assert (target / "f").read_text() == "good"
    assert sorted(os.listdir(tmp_path)) == [".claude"]
