"""The egress server: one listening unix socket per session, each with its own policy and log.

Whoever runs it (the `coi egress serve` daemon, or `coi build` for its build container) tells it
which sessions there are with `apply()`; a session's policy can be replaced at any time and the
next request is judged by the new one. A session that is no longer listed is closed: its
listener, every connection of it, its socket file and its log handle.

A socket is made only inside a directory the caller made private (0700); a stale file in its
place is removed only if it is a socket, and never through a link.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import msgspec

from coi_async.egress import listener as accept
from coi_async.egress.connection import (
    ConnectionHandler,
    ConnectionRecord,
    Connector,
    Limits,
    RecordSink,
    Resolver,
    system_resolve,
)
from coi_async.egress.logfile import SessionLog
from coi_async.egress.netns import Inside, listen_inside
from coi_async.egress.policy import Policy
from coi_async.egress.splice import tcp_connect
from coi_async.errors import EgressError

SESSION_CONNECTIONS = 128
# How long a closed session's connections get to end on their own before they are cancelled.
_CLOSE_GRACE_S = 2.0


class SessionSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What the server serves for one session."""

    key: str  # stable id of the session (its registration)
    socket: str  # where to listen
    container: str = ""
    project: str = ""
    policy: Policy
    log: str = ""  # the session's log file; "" keeps none
    # Also listen inside the container's network namespace (netns.py), not only at `socket`.
    inside: Inside | None = None


class _Session:
    def __init__(self, spec: SessionSpec, pool: accept.SlotPool, serve_one: accept.Handler) -> None:
        self.spec = spec
        self.pool = pool
        self.serve_one = serve_one
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.listener: anyio.abc.SocketListener | None = None
        # The listener inside the container, where it is (None: none), and why it is not.
        self.inside: Inside | None = None
        self.inside_listener: anyio.abc.SocketListener | None = None
        self.inside_scope = anyio.CancelScope()
        self.inside_error = ""
        self.log: SessionLog | None = SessionLog(spec.log) if spec.log else None
        self.counts = {"allowed": 0, "refused": 0, "failed": 0, "malformed": 0}
        self.bytes_up = 0
        self.bytes_down = 0


def remove_stale_socket(path: str) -> None:
    """Unlink `path` if it is a socket (a previous daemon's); anything else there is an error."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise EgressError(f"cannot listen at {path}: something else is there")
    os.unlink(path)


class EgressServer:
    def __init__(
        self,
        *,
        limits: Limits | None = None,
        session_connections: int = SESSION_CONNECTIONS,
        resolve: Resolver = system_resolve,
        connect: Connector = tcp_connect,
        on_record: RecordSink | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self._session_connections = session_connections
        self._resolve = resolve
        self._connect = connect
        self._on_record = on_record
        self._sessions: dict[str, _Session] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[EgressServer]:
        """Serve while the context is open; every session is closed on the way out."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                closing = [self._close(key) for key in list(self._sessions)]
                with anyio.move_on_after(_CLOSE_GRACE_S + 1, shield=True):
                    for session in closing:
                        await session.done.wait()
                self._tg = None
                tg.cancel_scope.cancel()

    @property
    def sessions(self) -> dict[str, SessionSpec]:
        return {key: s.spec for key, s in self._sessions.items()}

    async def apply(self, specs: Sequence[SessionSpec]) -> None:
        """Serve exactly these sessions: new ones start listening (before this returns), gone
        ones are closed, the others get their new policy and log."""
        wanted = {spec.key: spec for spec in specs}
        for key in [k for k in self._sessions if k not in wanted]:
            self._close(key)
        for key, spec in wanted.items():
            current = self._sessions.get(key)
            if current is not None and current.spec.socket == spec.socket:
                if current.spec.log != spec.log and current.log is not None:
                    current.log.close()
                    current.log = None
                if spec.log and current.log is None:
                    current.log = SessionLog(spec.log)
                current.spec = spec
                if spec.inside != current.inside:
                    await self._place_inside(current, spec.inside)
                continue
            if current is not None:
                self._close(key)
            await self._open(spec)

    async def _open(self, spec: SessionSpec) -> None:
        assert self._tg is not None, "apply() only while running()"
        remove_stale_socket(spec.socket)
        try:
            sock_listener = await anyio.create_unix_listener(spec.socket, mode=0o600)
        except OSError as exc:
            raise EgressError(f"cannot listen at {spec.socket}: {exc.strerror or exc}") from exc
        handler = ConnectionHandler(
            lambda: session.spec.policy,
            session=spec.container,
            project=spec.project,
            on_record=lambda record: self._record(session, record),
            resolve=self._resolve,
            connect=self._connect,
            limits=self.limits,
        )

        async def serve_one(stream: anyio.abc.ByteStream, slot: accept.Slot) -> None:
            await handler.handle(stream, on_head=slot.busy)

        session = _Session(spec, accept.SlotPool(self._session_connections), serve_one)
        session.listener = sock_listener
        self._sessions[spec.key] = session

        async def run() -> None:
            try:
                with session.scope:
                    async with sock_listener:
                        await accept.serve(sock_listener, serve_one, session.pool)
            finally:
                session.done.set()

        self._tg.start_soon(run, name=f"egress:{spec.container or spec.key}")
        await self._place_inside(session, spec.inside)

    async def _place_inside(self, session: _Session, place: Inside | None) -> None:
        """Move the session's listener inside its container to `place` (None: close it). A
        failure is kept in the status, and the next `apply` with that place tries again."""
        if session.inside_listener is not None:
            await session.inside_listener.aclose()
            session.inside_listener, session.inside = None, None
        session.inside_error = ""
        if place is None:
            return
        try:
            listener = await listen_inside(place)
        except EgressError as exc:
            session.inside_error = str(exc)
            return
        session.inside_listener, session.inside = listener, place
        session.inside_scope = scope = anyio.CancelScope()
        assert self._tg is not None

        async def run() -> None:
            with scope, suppress(OSError):
                async with listener:
                    await accept.serve(listener, session.serve_one, session.pool)

        self._tg.start_soon(run, name=f"egress-inside:{session.spec.container}")

    def _record(self, session: _Session, record: ConnectionRecord) -> None:
        session.counts[record.decision] += 1
        session.bytes_up += record.bytes_up
        session.bytes_down += record.bytes_down
        if session.log is not None:
            session.log.write(record)
        if self._on_record is not None:
            self._on_record(record)

    def _close(self, key: str) -> _Session:
        """Stop serving a session: its socket file and log handle go now, its connections within
        `_CLOSE_GRACE_S`."""
        session = self._sessions.pop(key)
        # Its connections still write their records as they end: into no log from now on.
        log, session.log = session.log, None
        if log is not None:
            log.close()
        try:
            remove_stale_socket(session.spec.socket)
        except (OSError, EgressError):
            pass
        assert self._tg is not None
        self._tg.start_soon(self._wind_down, session)
        return session

    async def _wind_down(self, session: _Session) -> None:
        # Closing sockets rather than cancelling their readers: a cancelled receive on an anyio
        # unix stream can race with the socket turning readable (listener.Slot.evict).
        if session.listener is not None:
            await session.listener.aclose()
        if session.inside_listener is not None:
            await session.inside_listener.aclose()
        session.pool.shut_all()
        with anyio.move_on_after(_CLOSE_GRACE_S):
            await session.done.wait()
        session.scope.cancel()
        session.inside_scope.cancel()

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "key": key,
                "container": s.spec.container,
                "project": s.spec.project,
                "mode": s.spec.policy.mode,
                "socket": s.spec.socket,
                "inside": s.inside is not None,
                **({"inside_error": s.inside_error} if s.inside_error else {}),
                "active": s.pool.active,
                "accepted": s.pool.accepted,
                "evicted": s.pool.evicted,
                **s.counts,
                "bytes_up": s.bytes_up,
                "bytes_down": s.bytes_down,
            }
            for key, s in sorted(self._sessions.items(), key=lambda kv: kv[1].spec.container)
        ]
