"""Exec: run a command in an instance over incusd's websockets.

incusd starts the command only once every stream is connected (and gives up after 10 s), so the
sockets are connected concurrently. Data travels in binary frames; an empty text frame marks the
end of a stream. The exit code arrives in the operation's metadata, which we long-poll from the
start so it cannot vanish before we look (incusd forgets ended operations after 5 s).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import anyio
import msgspec

from coi_async.errors import IncusApiError, IncusError, ReadLimitError
from coi_async.incus.base import ApiBase, decode
from coi_async.incus.exec_streams import ByteSink, close_all, pump_in, pump_out, send_resize
from coi_async.incus.models import STATUS_SUCCESS, AsyncResponse, ExecPost, Operation
from coi_async.incus.paths import instance_path
from coi_async.incus.transport import WebSocket

# A callable gives a new stream for each start of the command: one that incusd failed before the
# command started can be started again with it (a held-open stream cannot be given twice).
Stdin = bytes | AsyncIterable[bytes] | Callable[[], AsyncIterable[bytes]] | None

# The exit code incusd reports when it lost track of an exec's process (seen on loaded hosts).
LOST_EXEC = -1
# incusd's error when forkexec never reported the attached process: the attach itself failed, so
# the command did not start (right after a container starts, or under load) and may be started again.
_NEVER_STARTED = "Failed to retrieve PID of executing child process"
# How often, and after which pauses, an exec that never started is started again: about 6 s in
# all, as a cluster member under load refuses the websockets of the execs it forwards for
# seconds at a time (`benchmarks/cluster.py`, 96 sessions on 3 members sharing 2 CPUs).
_START_RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.5, 2.0)
# The most `exec` collects of a command's stdout and stderr together: the instance decides what
# its commands print, and a replaced `sh` must not be able to fill the host's memory.
EXEC_OUTPUT_MAX_BYTES = 16 * 1024 * 1024


class Terminal(Protocol):
    """What an interactive exec needs from the user's terminal (the CLI owns the real one)."""

    def size(self) -> tuple[int, int]:
        """(columns, rows) now."""
        ...

    def raw(self) -> AbstractContextManager[None]:
        """The terminal handed over to the remote command for the duration (every key goes there)."""
        ...

    async def read(self) -> bytes:
        """The next bytes typed; b"" at end of input."""
        ...

    async def write(self, data: bytes) -> None: ...

    def resizes(self) -> AsyncIterator[tuple[int, int]]:
        """(columns, rows) each time the window changes."""
        ...


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class _StreamsRefusedError(Exception):
    """incusd refused one of an exec's websockets before the set was complete: the command
    never started (`error` is what it said)."""

    def __init__(self, error: IncusApiError) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.asynccontextmanager
async def _refusals_as_errors() -> AsyncIterator[None]:
    """Where an exec is not started again: the refusal as incusd's own error."""
    try:
        yield
    except _StreamsRefusedError as refused:
        raise refused.error from None


def never_started(op: Operation) -> bool:
    """Whether incusd failed the exec before its command started (so starting it again is safe)."""
    return (op.metadata or {}).get("return") == LOST_EXEC and _NEVER_STARTED in (op.err or "")


def _exit_code(op: Operation) -> int:
    ret = (op.metadata or {}).get("return")
    if isinstance(ret, int):
        # 126/127 fail the operation too, but still carry the code: that is the answer.
        return ret
    if op.status_code != STATUS_SUCCESS:
        raise IncusError(f"exec failed: {op.err or op.status}")
    raise IncusError("exec ended without an exit code")


def _request(command: list[str], env: Mapping[str, str] | None, user: int, group: int, cwd: str) -> ExecPost:
    return ExecPost(
        command=command,
        environment=dict(env or {}),
        wait_for_websocket=True,
        user=user,
        group=group,
        cwd=cwd,
    )


class ExecApi(ApiBase):
    @contextlib.asynccontextmanager
    async def _streams(
        self, name: str, request: ExecPost, *, last: str
    ) -> AsyncIterator[tuple[str, dict[str, WebSocket]]]:
        """Start `request` and yield its operation and connected streams, closed on the way out."""
        operation, fds = await self._start_exec(name, request)
        sockets = await self._connect_all(operation, fds, last=last)
        try:
            yield operation, sockets
        except BaseException:
            with anyio.CancelScope(shield=True):
                await close_all(sockets, abandoned=True)
            raise
        with anyio.CancelScope(shield=True):
            await close_all(sockets)

    async def _start_exec(self, name: str, request: ExecPost) -> tuple[str, dict[str, str]]:
        envelope = await self._call("POST", f"{instance_path(name)}/exec", body=request)
        if not isinstance(envelope, AsyncResponse):
            raise IncusError("exec did not start a background operation")
        op = decode(envelope.metadata, Operation, what="exec operation")
        fds = (op.metadata or {}).get("fds") or {}
        return envelope.operation.split("?", 1)[0], {str(k): str(v) for k, v in fds.items()}

    async def _connect_all(
        self, operation: str, fds: Mapping[str, str], *, last: str
    ) -> dict[str, WebSocket]:
        """Connect every stream: all but `last` concurrently, then `last`.

        incusd starts the command the moment its last required stream connects and may write
        output (and close) at once. Frames that arrive with the upgrade response itself are lost
        by aiohttp now and then (~1% under load), so the socket that completes the set must be
        one incusd never writes output to: stdin without a PTY, control with one. Connecting
        control before the command starts also keeps a fast command from ending, and its
        operation from vanishing, before control is attached.
        """
        sockets: dict[str, WebSocket] = {}

        async def connect(fd: str) -> None:
            sockets[fd] = await self._transport.connect_websocket(
                f"{operation}/websocket", params={"secret": fds[fd]}
            )

        try:
            try:
                async with anyio.create_task_group() as tg:
                    for fd in fds:
                        if fd != last:
                            tg.start_soon(connect, fd)
                await connect(last)
            except* IncusApiError as group:
                # The set never completed, so the command never started. A cluster member that
                # forwards the websocket to the instance's member refuses one now and then under
                # load (a 500).
                first: IncusApiError | BaseExceptionGroup[IncusApiError] = group.exceptions[0]
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise _StreamsRefusedError(first) from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await close_all(sockets, abandoned=True)
            raise
        return sockets

    async def exec_stream(
        self,
        name: str,
        command: list[str],
        *,
        stdin: Stdin = None,
        on_stdout: ByteSink | None = None,
        on_stderr: ByteSink | None = None,
        env: Mapping[str, str] | None = None,
        user: int = 0,
        group: int = 0,
        cwd: str = "",
    ) -> int:
        """Run a command without a terminal, streaming its output; return its exit code.

        An exec incusd fails before the command starts is started again (a few times, briefly
        apart) when its input can be given again (none, bytes, or a callable that makes the
        stream); only then is LOST_EXEC the answer.
        """
        request = _request(command, env, user, group, cwd)
        replayable = stdin is None or isinstance(stdin, bytes) or callable(stdin)
        delays = _START_RETRY_DELAYS_S if replayable else ()
        for delay in (*delays, None):
            try:
                done = await self._stream_once(name, request, stdin, on_stdout, on_stderr)
            except _StreamsRefusedError as refused:
                if delay is None:
                    raise refused.error from None
            else:
                if delay is None or not never_started(done):
                    return _exit_code(done)
            await anyio.sleep(delay)
        raise AssertionError("unreachable")  # the loop's last pass returns or raises

    async def _stream_once(
        self,
        name: str,
        request: ExecPost,
        stdin: Stdin,
        on_stdout: ByteSink | None,
        on_stderr: ByteSink | None,
    ) -> Operation:
        given = stdin() if callable(stdin) else stdin
        async with self._streams(name, request, last="0") as (operation, sockets):
            result: list[Operation] = []

            async def wait() -> None:
                result.append(await self._wait(operation))

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump_in, sockets["0"], given)
                async with anyio.create_task_group() as ended:
                    ended.start_soon(wait)
                    ended.start_soon(pump_out, sockets["1"], on_stdout)
                    ended.start_soon(pump_out, sockets["2"], on_stderr)
                # The command is gone (or never started): input it did not take has nowhere to
                # go, and a held-open stream would otherwise keep this exec from ever returning.
                tg.cancel_scope.cancel()
        return result[0]

    async def exec(
        self,
        name: str,
        command: list[str],
        *,
        stdin: Stdin = None,
        env: Mapping[str, str] | None = None,
        user: int = 0,
        group: int = 0,
        cwd: str = "",
        max_output_bytes: int = EXEC_OUTPUT_MAX_BYTES,
    ) -> ExecResult:
        """Run a command and collect its stdout and stderr byte for byte.

        ReadLimitError once they come to more than `max_output_bytes` together; the command is
        then killed (its exec abandoned) and nothing more is read.
        """
        out: list[bytes] = []
        err: list[bytes] = []
        kept = 0

        def keeper(into: list[bytes]) -> ByteSink:
            async def keep(data: bytes) -> None:
                nonlocal kept
                kept += len(data)
                if kept > max_output_bytes:
                    scope.cancel()
                    return
                into.append(data)

            return keep

        with anyio.CancelScope() as scope:
            code = await self.exec_stream(
                name,
                command,
                stdin=stdin,
                on_stdout=keeper(out),
                on_stderr=keeper(err),
                env=env,
                user=user,
                group=group,
                cwd=cwd,
            )
        if scope.cancelled_caught:
            raise ReadLimitError(
                f"{command[0]} in {name} printed more than {max_output_bytes} bytes", limit=max_output_bytes
            )
        return ExecResult(code, b"".join(out), b"".join(err))

    async def exec_interactive(
        self,
        name: str,
        command: list[str],
        *,
        read_input: Callable[[], Awaitable[bytes]],
        write_output: ByteSink,
        resizes: AsyncIterator[tuple[int, int]] | None = None,
        size: tuple[int, int] = (80, 24),
        env: Mapping[str, str] | None = None,
        user: int = 0,
        group: int = 0,
        cwd: str = "",
    ) -> int:
        """Run a command on a PTY in the instance, bridged both ways; return its exit code.

        `read_input` returns the next bytes typed (b"" at end of input), `resizes` yields
        (columns, rows) whenever the local window changes.
        """
        width, height = size
        request = msgspec.structs.replace(
            _request(command, env, user, group, cwd), interactive=True, width=width, height=height
        )
        async with (
            _refusals_as_errors(),
            self._streams(name, request, last="control") as (operation, sockets),
            anyio.create_task_group() as tg,
        ):

            async def forward_input() -> None:
                while data := await read_input():
                    await sockets["0"].send_bytes(data)

            async def forward_resizes() -> None:
                if resizes is None:
                    return
                async for columns, rows in resizes:
                    await send_resize(sockets["control"], columns, rows)

            tg.start_soon(forward_input)
            tg.start_soon(forward_resizes)
            await pump_out(sockets["0"], write_output)
            # incusd holds the operation open until our side of the PTY stream ends too.
            with contextlib.suppress(IncusError):
                await sockets["0"].send_text("")
            done = await self._wait(operation)
            tg.cancel_scope.cancel()
        return _exit_code(done)

    async def exec_attached(
        self,
        name: str,
        command: list[str],
        *,
        terminal: Terminal,
        env: Mapping[str, str] | None = None,
        user: int = 0,
        group: int = 0,
        cwd: str = "",
    ) -> int:
        """Run a command on a PTY with `terminal` attached (in raw mode) for its duration."""
        term = terminal
        with term.raw():
            return await self.exec_interactive(
                name,
                command,
                read_input=term.read,
                write_output=term.write,
                resizes=term.resizes(),
                size=term.size(),
                env=env,
                user=user,
                group=group,
                cwd=cwd,
            )
