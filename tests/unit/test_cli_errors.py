from __future__ import annotations

from pathlib import Path

from tests.coi_cli import coi_sync


def test_missing_socket_is_one_line_without_traceback() -> None:
    result = coi_sync("container", "exists", "x", timeout=60, INCUS_SOCKET="/nonexistent/unix.socket")
    assert result.code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: cannot reach incusd: no socket at /nonexistent/unix.socket")
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback() -> None:
    result = coi_sync(
        "--debug", "container", "exists", "x", timeout=60, INCUS_SOCKET="/nonexistent/unix.socket"
    )
    assert result.code != 0
    assert "Traceback" in result.stderr


def test_version_and_unknown_command() -> None:
    version = coi_sync("version", timeout=60)
    assert version.code == 0
    assert version.stdout.splitlines()[0].startswith("coi-async (coi) v")
    unknown = coi_sync("no-such-command", timeout=60)
    assert unknown.code == 2


def test_one_cause_is_said_once_even_when_several_tasks_hit_it(tmp_path: Path) -> None:
    result = coi_sync(
        "run", "--", "true",
        timeout=60, INCUS_SOCKET="/nonexistent/unix.socket", HOME=str(tmp_path), COI_CONFIG="",
    )  # fmt: skip
    assert result.code == 3
    assert len(result.stderr.strip().splitlines()) == 1
