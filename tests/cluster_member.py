"""One member of the test cluster (tests/cluster_harness.py): its incusd in the member's network
namespace and a mount namespace of its own, started, waited for and stopped by Popen or by pid
alone (a cluster that scripts/cluster-up left running). Also the shell helpers both use."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PORT = 8443
MEMBERS = 3
WAIT_S = 60.0
STOP_WAIT_S = 5.0


class ClusterError(Exception):
    pass


class GuardRouteMissingError(ClusterError):
    pass


def cluster_images() -> tuple[str, str]:
    # Imported where needed: tests.helpers loads pytest and the client (a second), which
    # scripts/cluster-up's check of a running cluster must not wait for.
    from tests.helpers import BUSYBOX_IMAGE, DEBIAN_IMAGE

    return (BUSYBOX_IMAGE, DEBIAN_IMAGE)


def sh(*argv: str, env: Mapping[str, str] | None = None, stdin: str = "", check: bool = True) -> str:
    done = subprocess.run(
        list(argv),
        input=stdin.encode(),
        env=dict(env) if env else None,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if check and done.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: {done.stderr.decode().strip()}")
    return done.stdout.decode()


def ip(args: str) -> str:
    """`ip ARGS` (names and addresses here never hold spaces)."""
    return sh("ip", *args.split())


@dataclass
class Member:
    index: int
    base: Path
    netns: str
    address: str
    pid: int = 0  # the daemon's (also when not this process's child); 0 when not started
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"m{self.index}"

    @property
    def directory(self) -> Path:
        return self.base / self.name

    @property
    def url(self) -> str:
        return f"https://{self.address}:{PORT}"

    @property
    def env(self) -> dict[str, str]:
        """The `incus` CLI on this member's unix socket."""
        return {**os.environ, "INCUS_DIR": str(self.directory), "INCUS_CONF": str(self.base / "conf")}

    def alive(self) -> bool:
        """Zombie-aware: a dead daemon not yet reaped still answers `kill -0`."""
        if not self.pid:
            return False
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            return False
        return state != "Z" and str(self.directory / "incusd.log").encode() in cmdline

    def spawn(self) -> None:
        """Detached (its own session, no pipe of ours): it may outlive this process."""
        from tests.private_incusd import INCUSD, START_SCRIPT

        env = {
            **os.environ,
            "INCUS_DIR": str(self.directory),
            "INCUSD": INCUSD,
            "SYSMOVE": str(self.base / f"sysmove-{self.name}"),
        }
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--propagation", "slave"]
        # The daemon's own stderr (a panic) beside its log; the child keeps its copy of the fd.
        with (self.directory / "incusd.err").open("ab") as err:
            self.process = subprocess.Popen(
                [*argv, "/bin/sh", "-ec", START_SCRIPT],
                env=env,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.pid = self.process.pid  # nsenter, unshare and sh exec: incusd's pid

    def wait_ready(self) -> None:
        sh("incus", "admin", "waitready", "--timeout", "60", env=self.env)

    def stop(self, *, grace_s: float = STOP_WAIT_S) -> None:
        """SIGTERM (SIGKILL after `grace_s`): its containers keep running, as on a crash."""
        if self.process is None:
            self._stop_by_pid(grace_s)
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(timeout=30)
        self.process = None
        self.pid = 0

    def _stop_by_pid(self, grace_s: float) -> None:
        """`stop` of a daemon another process spawned: signalled only while `alive` (so never a
        reused pid), waited for by polling."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
            if not self.alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + wait_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pid = 0
