from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_coi(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coi_async", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


def test_missing_socket_is_one_line_without_traceback() -> None:
    result = run_coi("container", "exists", "x", INCUS_SOCKET="/nonexistent/unix.socket")
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: cannot reach incusd: no socket at /nonexistent/unix.socket")
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback() -> None:
    result = run_coi("--debug", "container", "exists", "x", INCUS_SOCKET="/nonexistent/unix.socket")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_version_and_unknown_command() -> None:
    version = run_coi("version")
    assert version.returncode == 0
    assert version.stdout.splitlines()[0].startswith("coi-async (coi) v")
    unknown = run_coi("no-such-command")
    assert unknown.returncode == 2


def test_one_cause_is_said_once_even_when_several_tasks_hit_it(tmp_path: Path) -> None:
    result = run_coi(
        "run", "--", "true",
        INCUS_SOCKET="/nonexistent/unix.socket", HOME=str(tmp_path), COI_CONFIG="",
    )  # fmt: skip
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1
