"""Run the real `coi` command line in a subprocess, scoped to the test's Incus project."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio

COI = str(Path(sys.executable).with_name("coi"))


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


def isolated_env(
    *,
    home: Path,
    project: str,
    prefix: str,
    drop: tuple[str, ...] = ("COI_", "INCUS_PROJECT"),
    **extra: str,
) -> dict[str, str]:
    """This process's environment without the variables starting with `drop`, for a coi run with
    its own HOME, container prefix and Incus project."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(HOME=str(home), COI_CONTAINER_PREFIX=prefix, COI_INCUS_PROJECT=project, NO_COLOR="1", **extra)
    return env


async def coi(*args: str, project: str | None = None, cwd: Path | None = None, **env: str) -> Run:
    environ = {**os.environ, "NO_COLOR": "1", **env}
    environ.pop("COI_DEBUG", None)
    if project is not None:
        environ["INCUS_PROJECT"] = project
    with anyio.fail_after(300):
        done = await anyio.run_process([COI, *args], env=environ, cwd=cwd, check=False)
    return Run(done.returncode, done.stdout, done.stderr)
