"""A private incusd for tests that must restart or break their daemon without touching the shared one.

It runs in a network namespace with only loopback (so its start-up fetch of instance types fails
before any packet leaves) and its own slave mount namespace with this namespace's sysfs but the
host's cgroup tree (the Incus test-suite arrangement, ../shared/reference/incus-cluster-on-one-
machine.md section 4). It listens on its own unix socket only, has a `dir` pool under a throwaway
directory, and gets the shared daemon's busybox test image. Everything goes away afterwards, also
after a failure: its containers, the daemon, the namespace and the directory.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from tests.helpers import BUSYBOX_IMAGE

INCUSD = next(
    (p for p in ("/usr/libexec/incus/incusd", "/usr/bin/incusd", "/usr/sbin/incusd") if os.path.exists(p)),
    "incusd",
)
_PRESEED = """\
config: {images.auto_update_interval: "0"}
storage_pools: [{name: default, driver: dir}]
profiles: [{name: default, devices: {root: {path: /, pool: default, type: disk}}}]
"""
# The daemon in its namespaces: the host's sysfs moved aside for this netns's own, the host's
# cgroup tree put back, as many files as the hard limit allows.
START_SCRIPT = """
mkdir -p "$SYSMOVE"
mount --move /sys "$SYSMOVE"
mount -t sysfs sysfs /sys
mount --move "$SYSMOVE/fs/cgroup" /sys/fs/cgroup
umount -l "$SYSMOVE"
ulimit -n "$(ulimit -Hn)"
exec "$INCUSD" --group root --logfile "$INCUS_DIR/incusd.log"
"""


async def _run(*argv: str, env: Mapping[str, str] | None = None, stdin: bytes = b"") -> None:
    await anyio.run_process(list(argv), input=stdin, env=dict(env) if env else None, check=True)


@dataclass
class PrivateIncusd:
    base: Path
    netns: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def directory(self) -> Path:
        return self.base / "incus"

    @property
    def socket(self) -> Path:
        return self.directory / "unix.socket"

    @property
    def cli_env(self) -> dict[str, str]:
        """The environment the `incus` CLI needs to talk to this daemon (test set-up only)."""
        return {**os.environ, "INCUS_DIR": str(self.directory), "INCUS_CONF": str(self.base / "conf")}

    async def start(self) -> None:
        env = {
            **os.environ,
            "INCUS_DIR": str(self.directory),
            "INCUSD": INCUSD,
            "SYSMOVE": str(self.base / "sysmove"),
        }
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--propagation", "slave"]
        self.process = subprocess.Popen(  # noqa: ASYNC220 - a daemon, waited for below
            [*argv, "/bin/sh", "-ec", START_SCRIPT], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await _run("incus", "admin", "waitready", "--timeout", "60", env=self.cli_env)

    async def stop(self) -> None:
        """Stop the daemon the way a restart does: its containers keep running."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(functools.partial(self.process.wait, timeout=30))
        self.process = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(60):
            if self.process is not None and self.process.poll() is None:
                # Stops every container, then the daemon.
                with contextlib.suppress(subprocess.CalledProcessError):
                    await _run("incus", "admin", "shutdown", "--timeout", "30", env=self.cli_env)
            if self.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=10)
            with contextlib.suppress(subprocess.CalledProcessError):
                await _run("ip", "netns", "del", self.netns)
            shutil.rmtree(self.base, ignore_errors=True)


@contextlib.asynccontextmanager
async def private_incusd() -> AsyncIterator[PrivateIncusd]:
    """A running private incusd with a `dir` pool and the busybox test image."""
    tag = secrets.token_hex(3)
    # Not under /tmp/pytest-of-root (0700): the containers' mapped root must traverse the path.
    base = Path(f"/var/tmp/coi-test-incusd-{tag}")
    base.mkdir(mode=0o711)
    (base / "incus").mkdir(mode=0o711)
    daemon = PrivateIncusd(base, f"coi-test-{tag}")
    try:
        await _run("ip", "netns", "add", daemon.netns)
        await _run("ip", "netns", "exec", daemon.netns, "ip", "link", "set", "lo", "up")
        await daemon.start()
        await _run("incus", "admin", "init", "--preseed", env=daemon.cli_env, stdin=_PRESEED.encode())
        export = base / "image"
        await _run("incus", "image", "export", BUSYBOX_IMAGE, str(export))
        files = sorted(str(p) for p in base.glob("image*"))
        await _run("incus", "image", "import", *files, "--alias", BUSYBOX_IMAGE, env=daemon.cli_env)
        for leftover in files:
            os.unlink(leftover)
        yield daemon
    finally:
        await daemon.close()
