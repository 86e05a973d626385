"""The one way tests run the real `coi` command line in a subprocess.

`os.environ` is already the test's own (tests/conftest.py's autouse `isolated_environment`: its
own HOME and XDG directories, no COI_* variable of the developer's), so a run sees only what the
test gives it. `coi` (async) and `coi_sync` return a `Run` (the output as bytes, `out`/`err`, and
as text, `stdout`/`stderr`); `coi_env` and `isolated_env` make the environments they run in, also
for tests that must start the process themselves (pexpect, Popen) with `COI`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

COI = str(Path(sys.executable).with_name("coi"))
TIMEOUT_S = 300


@dataclass(frozen=True)
class Run:
    code: int
    out: bytes
    err: bytes

    @property
    def stdout(self) -> str:
        return self.out.decode()

    @property
    def stderr(self) -> str:
        return self.err.decode()

    def one_error(self, code: int, *fragments: str) -> str:
        """Assert the run failed with `code` and exactly one `Error:` line containing `fragments`."""
        lines = self.stderr.strip().splitlines()
        assert self.code == code, (self.code, self.stdout, self.stderr)
        assert len(lines) == 1, lines
        assert lines[0].startswith("Error: "), lines
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        assert "Traceback" not in self.stderr
        return lines[0]


def home_env(home: Path | str) -> dict[str, str]:
    """HOME and the XDG base directories inside it, as a fresh account would have them."""
    home = str(home)
    return {
        "HOME": home,
        "XDG_CONFIG_HOME": os.path.join(home, ".config"),
        "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
        "XDG_CACHE_HOME": os.path.join(home, ".cache"),
    }


def coi_env(
    *,
    home: Path | str | None = None,
    project: str | None = None,
    prefix: str | None = None,
    drop: tuple[str, ...] = (),
    **extra: str,
) -> dict[str, str]:
    """This process's environment for a coi run: no colour, no --debug, not inside tmux; with its
    own HOME (and XDG directories in it), Incus project (INCUS_PROJECT) and container prefix when
    given, without the variables starting with `drop`, and `extra` on top."""
    env = {k: v for k, v in os.environ.items() if not (drop and k.startswith(drop))}
    for var in ("COI_DEBUG", "TMUX", "TMUX_PANE"):
        env.pop(var, None)
    env["NO_COLOR"] = "1"
    if home is not None:
        env.update(home_env(home))
    if project is not None:
        env["INCUS_PROJECT"] = project
    if prefix is not None:
        env["COI_CONTAINER_PREFIX"] = prefix
    env.update(extra)
    return env


def isolated_env(
    *,
    home: Path,
    project: str,
    prefix: str,
    drop: tuple[str, ...] = ("COI_", "INCUS_PROJECT"),
    **extra: str,
) -> dict[str, str]:
    """The environment for a coi run with its own HOME, container prefix and Incus project (given as
    COI_INCUS_PROJECT, i.e. `--project`), without the variables starting with `drop`."""
    return coi_env(home=home, prefix=prefix, drop=drop, COI_INCUS_PROJECT=project, **extra)


def _environ(env: Mapping[str, str] | None, project: str | None, extra: Mapping[str, str]) -> dict[str, str]:
    if env is not None and project is not None:
        raise TypeError("give the project in `env` or as `project`, not both")
    environ = dict(env) if env is not None else coi_env(project=project)
    environ.update(extra)
    return environ


async def coi(
    *args: str,
    env: Mapping[str, str] | None = None,
    project: str | None = None,
    cwd: Path | str | None = None,
    stdin: bytes = b"",
    **extra: str,
) -> Run:
    """`coi ARGS` in `cwd` with `stdin` as its input; the test fails after TIMEOUT_S (for less, put
    the call in an `anyio.fail_after`).

    Its environment is `env` (e.g. one of `coi_env` or `isolated_env`), by default `coi_env()` in
    the Incus project `project` (INCUS_PROJECT); `extra` variables on top."""
    environ = _environ(env, project, extra)
    with anyio.fail_after(TIMEOUT_S):
        done = await anyio.run_process([COI, *args], input=stdin, env=environ, cwd=cwd, check=False)
    return Run(done.returncode, done.stdout, done.stderr)


def coi_sync(
    *args: str,
    env: Mapping[str, str] | None = None,
    project: str | None = None,
    cwd: Path | str | None = None,
    stdin: bytes = b"",
    timeout: float = TIMEOUT_S,
    **extra: str,
) -> Run:
    """`coi` for a synchronous test (or from a worker thread)."""
    environ = _environ(env, project, extra)
    done = subprocess.run(
        [COI, *args], env=environ, cwd=cwd, input=stdin, capture_output=True, timeout=timeout, check=False
    )
    return Run(done.returncode, done.stdout, done.stderr)
