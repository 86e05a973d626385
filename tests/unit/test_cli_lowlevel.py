"""The low-level families without incusd: version, help, usage errors, completion, and the pure
rules behind image cleanup and `CONTAINER:PATH` arguments."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncclick as click
import pytest

from coi_async import __version__
from coi_async.cli import help as help_text
from coi_async.cli.commands.image import human_size, short_date
from coi_async.cli.main import cli
from coi_async.errors import UsageError
from coi_async.incus.models import Image, ImageAlias
from coi_async.orchestration.files.transfer import Remote, parse_remote
from coi_async.orchestration.images.versions import plan_cleanup, version_stamp
from tests.coi_cli import COI, coi_sync

BIN = Path(COI).parent


def image(fingerprint: str, *aliases: str) -> Image:
    return Image(fingerprint=fingerprint, aliases=[ImageAlias(name=a) for a in aliases])


def test_version_two_lines_and_flag() -> None:
    run = coi_sync("version", "extra", "args")
    assert run.code == 0
    assert run.stdout.splitlines() == [
        f"coi-async (coi) v{__version__}",
        "https://github.com/coi-async/coi-async",
    ]
    assert coi_sync("--version").stdout == f"coi version {__version__}\n"


def test_unknown_flags_and_commands_are_one_line_usage_errors() -> None:
    for args, message in [
        (("--bogus",), "Error: No such option '--bogus'"),
        (("nope",), "Error: No such command 'nope'"),
        (("container", "launch", "--bogus", "i", "n"), "Error: No such option '--bogus'"),
        (("file", "push"), "Error: Missing argument 'LOCAL'"),
        (("image", "cleanup", "p"), "Error: Missing option '--keep'"),
        (("completion", "powershell"), "Error: Invalid value for '{bash|zsh|fish}'"),
    ]:
        run = coi_sync(*args)
        assert run.code == 2, (args, run.stderr)
        lines = run.stderr.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(message), lines


LOWLEVEL = (
    "coi container",
    "coi file",
    "coi image",
    "coi images",
    "coi tmux",
    "coi completion",
    "coi version",
)


def test_every_flag_of_the_lowlevel_families_is_described() -> None:
    seen = 0
    for below, command in help_text.walk(cli):
        path = f"coi {below}"
        if not path.startswith(LOWLEVEL):
            continue
        assert command.help or command.short_help, f"{path} has no help"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{path} {param.opts} has no help"
                seen += 1
    assert seen >= 15


def test_help_pages_exit_0() -> None:
    for args in (
        ("--help",),
        ("container", "exec", "--help"),
        ("file", "pull", "-h"),
        ("image", "cleanup", "--help"),
        ("tmux", "send", "--help"),
    ):
        run = coi_sync(*args)
        assert run.code == 0, (args, run.stderr)
        assert run.stdout.startswith("Usage: coi")
    exec_help = coi_sync("container", "exec", "--help").stdout
    for flag in ("--user", "--group", "--env", "--cwd", "--capture", "--format"):
        assert flag in exec_help


def test_bash_completion_completes_a_command() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    script = coi_sync("completion", "bash").stdout
    assert "complete " in script
    probe = (
        "source <(coi completion bash)\n"
        'COMP_WORDS=(coi con); COMP_CWORD=1; _coi_completion coi; echo "${COMPREPLY[*]}"\n'
        "COMPREPLY=(); COMP_WORDS=(coi container ex); COMP_CWORD=2; _coi_completion coi; "
        'echo "${COMPREPLY[*]}"\n'
    )
    done = subprocess.run(
        [bash, "--norc", "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["container", "exec exists"]


@pytest.mark.parametrize(
    ("shell", "marker"), [("zsh", "#compdef coi"), ("fish", "complete --no-files --command coi")]
)
def test_zsh_and_fish_scripts(shell: str, marker: str) -> None:
    run = coi_sync("completion", shell)
    assert run.code == 0
    assert marker in run.stdout
    assert "_COI_COMPLETE" in run.stdout
    binary = shutil.which(shell)
    if binary is not None:  # syntax check where the shell is installed
        check = subprocess.run([binary, "-n"], input=run.stdout, capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr


def test_plan_cleanup_orders_by_stamp_and_spares_other_aliases() -> None:
    images = [
        image("a1", "app-20250101-000000"),
        image("b2", "app-20260101-000000"),
        image("c3", "app-20251231-235959", "app"),  # the main alias still names it
        image("d4", "app-20240101-000000"),
        image("e5", "app-latest"),  # not a version
        image("f6", "other-20200101-000000"),
    ]
    plan = plan_cleanup(images, "app-", 1)
    assert [v.alias for v in plan.keep] == ["app-20260101-000000", "app-20251231-235959"]
    assert [v.alias for v in plan.delete] == ["app-20240101-000000", "app-20250101-000000"]
    assert plan_cleanup(images, "app-", 10).delete == []
    assert plan_cleanup(images, "zzz", 1) == plan_cleanup([], "zzz", 1)
    with pytest.raises(UsageError, match="--keep must be > 0"):
        plan_cleanup(images, "app-", 0)
    assert version_stamp("x-20260131-235959") == "20260131-235959"
    assert version_stamp("x-2026013-235959") is None


def test_parse_remote() -> None:
    assert parse_remote("c1:/a b/c", role="destination") == Remote("c1", "/a b/c")
    assert parse_remote("c1:/x:y", role="source") == Remote("c1", "/x:y")
    for bad in ("c1", "c1:", ":/x", ""):
        with pytest.raises(UsageError, match="must be in format 'container:path'"):
            parse_remote(bad, role="destination")
    with pytest.raises(UsageError, match="must be absolute"):
        parse_remote("c1:rel", role="source")


def test_human_size_and_dates() -> None:
    assert human_size(512) == "512B"
    assert human_size(12_900_000) == "12.3MB"
    assert human_size(3 * 1024**3) == "3.0GB"
    assert short_date("not a date") == "not a date"
    assert len(short_date("2026-01-31T12:00:00.123456789Z")) == len("2026-01-31 12:00")


def test_every_help_page_has_flags_and_examples() -> None:
    """Help reads as the original's: `Flags:` and real invocations under `Examples:`."""
    for path, _command in help_text.walk(cli):
        args = [*path.split(), "--help"] if path else ["--help"]
        run = coi_sync(*args)
        assert run.code == 0, (path, run.stderr)
        assert "\nFlags:\n" in run.stdout, path
        examples = run.stdout.split("\nExamples:\n", 1)
        assert len(examples) == 2, f"coi {path} --help has no examples"
        for line in examples[1].splitlines():
            assert line.startswith(("  coi ", "  source <(coi")), (path, line)
    assert "code-on-incus" in coi_sync("--help").stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_name_their_shell(shell: str) -> None:
    lines = coi_sync("completion", shell).stdout.splitlines()
    assert f"# {shell} completion for coi" in lines[:2]


def test_starting_coi_imports_no_command_until_it_runs() -> None:
    """What each `coi` process pays at start: the root group alone, then one command's module
    (here `container`, with what it borrows), never every command's."""
    probe = (
        "import sys, asyncclick as click\n"
        "from coi_async.cli.main import cli\n"
        "def loaded(): return ' '.join(sorted(m for m in sys.modules if m.startswith('coi_async.cli.commands.')))\n"
        "print(loaded())\n"
        "cli.get_command(click.Context(cli), 'container')\n"
        "print(loaded())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    at_start, after = done.stdout.splitlines()
    assert at_start == ""
    assert set(after.split()) == {
        "coi_async.cli.commands._lowlevel",
        "coi_async.cli.commands._options",
        "coi_async.cli.commands.container",
        "coi_async.cli.commands.run",
    }
