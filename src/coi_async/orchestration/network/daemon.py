"""Starting, finding and stopping the egress daemon (`coi egress serve`) of one incusd.

Sessions outlive the coi that started them (detach, --background), so their egress is served by
a long-running host process of its own. Any command that launches a session starts it when it
does not answer, detached from the terminal (a new session, stdin from /dev/null, output to
`daemon.log` in its directory); a start lock keeps two coi processes from starting two. The
daemon holds `daemon.lock` for as long as it runs, so a second one started anyway exits at
once. The control socket is the truth about whether it runs; the pid file is for `stop` when it
no longer answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
from typing import Any

import anyio

from coi_async.egress import control
from coi_async.errors import EgressDaemonRunningError, EgressError
from coi_async.orchestration.network.paths import EgressPaths

_START_S = 15.0
_POLL_S = 0.02
_LOG_KEEP_BYTES = 1024 * 1024


def daemon_command() -> list[str]:
    """The command line of a daemon started on demand."""
    return [sys.executable, "-m", "coi_async", "egress", "serve", "--on-demand"]


async def ping(paths: EgressPaths, *, within_s: float = 2.0) -> dict[str, Any] | None:
    """The daemon's answer to a ping; None when no daemon answers."""
    if not paths.control.exists():
        return None
    try:
        return await control.call(str(paths.control), "ping", within_s=within_s)
    except EgressError:
        return None


def _spawn(paths: EgressPaths) -> None:
    """Start the daemon detached: through a shell that puts it in the background and exits, so
    it is nobody's child (no zombie, whoever started it)."""
    log = paths.daemon_log
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > _LOG_KEEP_BYTES:
            os.replace(log, f"{log}.1")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        subprocess.run(
            ["/bin/sh", "-c", '"$@" &', "sh", *daemon_command()],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            cwd="/",
            start_new_session=True,
            close_fds=True,
            check=True,
            timeout=10,
        )
    finally:
        os.close(fd)


async def ensure_daemon(paths: EgressPaths) -> None:
    """Have the daemon running and answering; start it when it is not. EgressError if it will
    not start (its log says why)."""
    if await ping(paths) is not None:
        return
    paths.make()
    fd = os.open(paths.start_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        with anyio.fail_after(_START_S):
            # Polled, not blocking: another coi may hold the lock while its daemon starts.
            while True:
                if _try_lock(fd):
                    break
                await anyio.sleep(_POLL_S)
            # A daemon that holds its lock is starting, busy or on its way out: one that does not
            # answer a ping at once is waited for, never doubled (a second one would take over
            # the moment the first stops).
            while await ping(paths) is None:
                if not _daemon_lock_held(paths):
                    break
                await anyio.sleep(_POLL_S)
            else:
                return
            _spawn(paths)
            while True:
                if await ping(paths, within_s=1.0) is not None:
                    return
                await anyio.sleep(_POLL_S)
    except TimeoutError:
        raise EgressError(
            f"the egress daemon did not start within {_START_S:g}s", hint=f"see {paths.daemon_log}"
        ) from None
    finally:
        os.close(fd)


def _daemon_lock_held(paths: EgressPaths) -> bool:
    """Whether a daemon process holds the daemon lock now."""
    try:
        fd = os.open(paths.daemon_lock, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        return not _try_lock(fd)  # taken here only for this look: closing releases it
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def read_pid(paths: EgressPaths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_our_daemon(pid: int) -> bool:
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")  # noqa: SIM115
    except OSError:
        return False
    return b"egress" in cmdline and b"serve" in cmdline and b"coi_async" in b" ".join(cmdline)


async def stop_daemon(paths: EgressPaths, *, within_s: float = 10.0) -> bool:
    """Stop the daemon: asked politely over its socket, else SIGTERM by its pid file. Whether one
    was running."""
    pid = read_pid(paths)
    answered = asked = False
    with contextlib.suppress(EgressError):
        if paths.control.exists():
            asked = True
            await control.call(str(paths.control), "stop", within_s=2.0)
            answered = True
    if not answered:
        if pid is None:
            return False
        if not _is_our_daemon(pid):
            # Gone while it was asked (its answer lost to its exit), or never ours.
            return asked and not _alive(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if pid is not None:
        with anyio.move_on_after(within_s):
            while True:
                if not _alive(pid):
                    break
                await anyio.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (the daemon was our child and exited) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ", 1)[-1][:1] != b"Z"
    except OSError:
        return False


async def take_daemon_lock(paths: EgressPaths, *, wait_s: float = 0.0) -> int:
    """The daemon's lock, held for as long as the returned descriptor is open; waits up to
    `wait_s` for a daemon that is exiting. EgressDaemonRunningError when another one holds it."""
    fd = os.open(paths.daemon_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with anyio.move_on_after(wait_s):
        while True:
            if _try_lock(fd):
                return fd
            await anyio.sleep(_POLL_S)
    if _try_lock(fd):
        return fd
    os.close(fd)
    raise EgressDaemonRunningError(
        f"an egress daemon is already running for {paths.root} (pid {read_pid(paths) or '?'})"
    )
