"""`coi trust`, `coi trust --list`, `coi untrust` and the loader's warning, run as the real `coi`.

`coi clean --sessions` stands in for any command: it reads the config and, with no saved session,
needs no incusd.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from tests.coi_cli import Run, coi_env, coi_sync

HOSTILE = '[[mounts.default]]\nhost = "~"\ncontainer = "/mnt/home"\n[defaults]\nimage = "evil"\n'


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The test's own directory: the isolated HOME is elsewhere."""
    return tmp_path


def run(home: Path, cwd: Path, *args: str) -> Run:
    return coi_sync(*args, env=coi_env(home=home), cwd=cwd, timeout=60)


def warnings(result: Run) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Warning:")]


def test_untrusted_keys_are_ignored_with_one_warning_until_trust(
    isolated_environment: Path, workspace: Path
) -> None:
    home = isolated_environment
    (workspace / ".coi.toml").write_text(HOSTILE)
    before = run(home, workspace, "clean", "--sessions", "--force")
    assert before.code == 0, before.stderr
    (line,) = warnings(before)
    assert "ignoring defaults.image, mounts.default from " in line
    assert f"{workspace}/.coi.toml: it is not trusted" in line
    assert "run 'coi trust'" in line

    trusted = run(home, workspace, "trust")
    assert trusted.code == 0, trusted.stderr
    digest = hashlib.sha256(HOSTILE.encode()).hexdigest()
    assert trusted.stdout.startswith(f"Trusted {workspace}/.coi.toml (sha256 {digest[:12]})")
    assert warnings(run(home, workspace, "clean", "--sessions", "--force")) == []

    (workspace / ".coi.toml").write_text(HOSTILE + "# one more line\n")
    (changed,) = warnings(run(home, workspace, "clean", "--sessions", "--force"))
    assert "it changed since 'coi trust'" in changed

    listed = run(home, workspace, "trust", "--list")
    assert listed.code == 0
    assert listed.stdout == f"{workspace}/.coi.toml  {digest[:12]}  changed\n"


def test_a_stricter_untrusted_file_warns_about_nothing(isolated_environment: Path, workspace: Path) -> None:
    (workspace / ".coi.toml").write_text('[network]\nmode = "allowlist"\n')
    result = run(isolated_environment, workspace, "clean", "--sessions", "--force")
    assert result.code == 0
    assert warnings(result) == []


def test_the_trust_record_is_private_and_untrust_forgets(isolated_environment: Path, workspace: Path) -> None:
    home = isolated_environment
    (workspace / ".coi.toml").write_text(HOSTILE)
    assert run(home, workspace, "trust").code == 0
    record = home / ".coi" / "trusted-configs.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700
    assert list(json.loads(record.read_text())["files"]) == [f"{workspace}/.coi.toml"]
    assert run(home, workspace, "trust", "--list").stdout.endswith("  trusted\n")

    gone = run(home, workspace, "untrust")
    assert (gone.code, gone.stdout) == (0, f"Untrusted {workspace}/.coi.toml\n")
    assert warnings(run(home, workspace, "clean", "--sessions", "--force")) != []
    assert run(home, workspace, "trust", "--list").stdout == "No trusted config files\n"


def test_untrust_of_another_workspace_by_path(isolated_environment: Path, workspace: Path) -> None:
    home = isolated_environment
    (workspace / ".coi.toml").write_text(HOSTILE)
    assert run(home, workspace, "trust").code == 0
    (workspace / ".coi.toml").unlink()
    assert run(home, workspace, "trust", "--list").stdout.endswith("  missing\n")
    assert run(home, workspace.parent, "untrust", workspace.name).code == 0
    assert run(home, workspace, "trust", "--list").stdout == "No trusted config files\n"


def test_bad_inputs_are_one_line_and_exit_2(isolated_environment: Path, workspace: Path) -> None:
    home = isolated_environment
    run(home, workspace, "trust").one_error(2, "no .coi.toml in", "nothing to trust")
    run(home, workspace, "untrust").one_error(2, f"{workspace}/.coi.toml is not trusted")
    (workspace / ".coi.toml").write_text(HOSTILE)
    run(home, workspace, "untrust").one_error(2, "is not trusted")
    (workspace / ".coi.toml").write_text("[network]\nbogus = 1\n")
    run(home, workspace, "trust").one_error(2, "unknown key 'network.bogus'")
    assert not (home / ".coi" / "trusted-configs.json").exists()


def test_a_planted_fifo_or_huge_file_is_refused_not_read(isolated_environment: Path, workspace: Path) -> None:
    home = isolated_environment
    os.mkfifo(workspace / ".coi.toml")
    # A FIFO with no writer: opening it for reading would block for ever.
    run(home, workspace, "clean", "--sessions", "--force").one_error(2, ".coi.toml: not a regular file")
    run(home, workspace, "trust").one_error(2, "not a regular file")
    (workspace / ".coi.toml").unlink()
    with open(workspace / ".coi.toml", "wb") as fh:
        fh.truncate(2 * 1024 * 1024 * 1024)
    run(home, workspace, "trust").one_error(2, "larger than 1048576 bytes")


def test_a_broken_trust_record_is_one_line(isolated_environment: Path, workspace: Path) -> None:
    home = isolated_environment
    (home / ".coi").mkdir(mode=0o700)
    (home / ".coi" / "trusted-configs.json").write_text("[1, 2")
    (workspace / ".coi.toml").write_text(HOSTILE)
    run(home, workspace, "clean", "--sessions", "--force").one_error(2, "is not a list of trusted files")
