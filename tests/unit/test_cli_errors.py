from __future__ import annotations

import os
import subprocess
import sys


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
