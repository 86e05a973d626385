"""What coi makes on the host: private from the first byte; deletes that fail say so; API paths
that could reach another endpoint are refused before any request."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from coi_async.errors import SessionError, UsageError
from coi_async.hostfs import make_private_dir
from coi_async.incus import IncusClient
from coi_async.incus.endpoint import UnixEndpoint
from coi_async.orchestration.sessions.store import SessionMetadata, SessionStore, new_session_id


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever is private is so by its own mode, not the umask's."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_store_directories_and_metadata_are_private_from_the_start(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / ".coi" / "sessions-claude")
    sid = new_session_id()
    store.save_metadata(SessionMetadata(session_id=sid))
    assert mode(tmp_path / ".coi") == 0o700
    assert mode(store.root) == 0o700
    assert mode(store.session_dir(sid)) == 0o700
    assert mode(store.session_dir(sid) / "metadata.json") == 0o600


@pytest.mark.usefixtures("open_umask")
def test_make_private_dir_leaves_existing_directories_alone(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir(mode=0o755)
    make_private_dir(tmp_path / "shared" / "a" / "b")
    assert mode(tmp_path / "shared") == 0o755
    assert mode(tmp_path / "shared" / "a") == 0o700
    assert mode(tmp_path / "shared" / "a" / "b") == 0o700


def _immutable(path: Path, *, on: bool) -> None:
    # As root nothing but the immutable flag stops a removal (ext4, as the test machine has).
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


def test_a_delete_that_fails_half_way_is_a_failure_and_the_next_one_finishes(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    sid = new_session_id()
    store.save_metadata(SessionMetadata(session_id=sid, container_name="coi-1234abcd-1"))
    data = store.data_dir(sid)
    (data / "projects").mkdir(parents=True)
    (data / "projects" / "a.jsonl").write_text("{}")
    (data / "stuck").write_text("x")
    _immutable(data / "stuck", on=True)
    try:
        with pytest.raises(SessionError, match=rf"cannot delete session {sid}: Operation not permitted"):
            store.delete(sid)
        # Nothing resumes half a session: it is no longer listed as one, only as a thing to delete.
        assert store.list_sessions() == []
        assert store.for_container("coi-1234abcd-1") == []
        (left,) = store.list_sessions(with_data_only=False)
        assert (left.id, left.metadata, left.has_data) == (sid, None, False)
        with pytest.raises(SessionError, match="what is left is in"):
            store.delete(sid)
    finally:
        _immutable(tmp_path / f".{sid}.deleting" / ".claude" / "stuck", on=False)
    store.delete(sid)
    assert list(tmp_path.iterdir()) == []
    store.delete(sid)  # gone: deleted already


async def test_dot_segments_are_refused_before_any_connection(tmp_path: Path) -> None:
    accepted = 0
    listener = await anyio.create_unix_listener(tmp_path / "incus.socket")

    async def count(stream: anyio.abc.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await stream.aclose()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, count)
        async with IncusClient.connect(UnixEndpoint(tmp_path / "incus.socket")) as incus:
            for name in ("..", ".", ""):
                with pytest.raises(UsageError, match="invalid instance name"):
                    await incus.get_instance(name)
                with pytest.raises(UsageError, match="invalid instance name"):
                    await incus.exec(name, ["true"])
                with pytest.raises(UsageError, match="invalid image alias name"):
                    await incus.delete_image_alias(name)
                with pytest.raises(UsageError, match="invalid project name"):
                    await incus.delete_project(name)
        tg.cancel_scope.cancel()
    assert accepted == 0


@pytest.mark.parametrize("depth", [65, 5000, 200_000])
def test_a_session_settings_file_nested_too_deep_is_replaced_not_a_crash(depth: int) -> None:
    from coi_async.orchestration.sessions.credentials import merge_settings

    planted = b'{"a":' * depth + b"1" + b"}" * depth
    data, skipped = merge_settings(planted, b'{"theme": "dark"}', {"sandbox": True})
    assert skipped == ["existing"]
    assert json.loads(data) == {"theme": "dark", "sandbox": True}
