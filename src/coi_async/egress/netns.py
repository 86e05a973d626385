"""A listening socket inside a container's network namespace, owned by the daemon on the host.

Incus's `proxy` device relays every byte through a forkproxy process: one more copy each way,
which caps a download at about 0.4x of the host's own speed. A daemon running as root can
instead enter the container's network namespace for the time it takes to make a socket, bind
it to the container's 127.0.0.1:PORT and leave again; the socket stays in that namespace, and
connections the container makes to it arrive straight at the daemon, which splices them.

- The namespace is the one of the container's init, as incusd reports its pid. The pid is held
  with a pidfd while its namespace is opened, so a pid reused by another process in between is
  noticed (the namespace's inode must be the one the caller saw, and the pidfd still alive).
- It is entered from a thread made for this call only and ended after it: no pooled worker
  thread can be left in a container's namespace to resolve a name or connect there later.
- Loopback is brought up on the way, so a container whose init never does still reaches it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import socket
import struct
import threading
from contextlib import suppress

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from coi_async.egress.splice import RawSocketStream
from coi_async.errors import EgressError

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_BACKLOG = 512

# The C library this process already has loaded (no library search, which runs ldconfig).
_libc = ctypes.CDLL(None, use_errno=True)


class Inside(msgspec.Struct, frozen=True, kw_only=True):
    """Where a session's listener goes: `port` on loopback of the namespace `inode`, which is
    `pid`'s."""

    pid: int
    inode: int
    port: int

    def current(self) -> bool:
        """Whether `pid` is still in that namespace (a container restarted has a new one)."""
        return namespace_of(self.pid) == self.inode


def namespace_of(pid: int) -> int:
    """The inode of `pid`'s network namespace; 0 when the process is gone (or not readable)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return 0


def can_enter() -> bool:
    """Whether this process may make sockets in other network namespaces (it runs as root)."""
    return os.geteuid() == 0 and hasattr(_libc, "setns") and namespace_of(os.getpid()) != 0


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _loopback_up(sock: socket.socket) -> None:
    request = struct.pack("16sH22x", b"lo", 0)
    flags = struct.unpack("16sH22x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
    if not flags & _IFF_UP:
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def pidfd_alive(pidfd: int) -> bool:
    # A pidfd turns readable when its process exits.
    return not select.select([pidfd], [], [], 0)[0]


def _bind_inside(pid: int, inode: int, port: int) -> socket.socket:
    pidfd = os.pidfd_open(pid)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(target).st_ino != inode or not pidfd_alive(pidfd):
                raise EgressError(f"process {pid} is no longer the container's init")
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                finally:
                    _setns(home)
            finally:
                os.close(home)
        finally:
            os.close(target)
    finally:
        os.close(pidfd)
    try:
        # Made inside, it acts inside: loopback, bind and listen all concern the container's.
        _loopback_up(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(_BACKLOG)
        sock.settimeout(0.0)  # non-blocking
    except BaseException:
        sock.close()
        raise
    return sock


def _in_own_thread(pid: int, inode: int, port: int) -> socket.socket:
    result: list[socket.socket | OSError | EgressError] = []

    def run() -> None:
        try:
            result.append(_bind_inside(pid, inode, port))
        except (OSError, EgressError) as exc:  # handed to the caller
            result.append(exc)

    thread = threading.Thread(target=run, name="coi-netns", daemon=True)
    thread.start()
    thread.join()
    if not result:  # the thread died of something else; its traceback went to stderr
        raise EgressError("cannot listen inside the container")
    (outcome,) = result
    if isinstance(outcome, (OSError, EgressError)):
        raise outcome
    return outcome


async def listen_inside(place: Inside) -> RawSocketListener:
    """A listener on 127.0.0.1:`port` in the namespace of `place`. EgressError when its process
    is not in it any more or the port is taken there."""
    try:
        sock = await anyio.to_thread.run_sync(_in_own_thread, place.pid, place.inode, place.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise EgressError(f"port {place.port} is already taken inside the container") from exc
        raise EgressError(f"cannot listen inside the container: {exc.strerror or exc}") from exc
    return RawSocketListener(sock)


class RawSocketListener(anyio.abc.SocketListener):
    """Accepts connections as `RawSocketStream`s, which the daemon can splice (anyio's TCP
    streams read through an asyncio transport, so they could not be)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @property
    def _raw_socket(self) -> socket.socket:
        return self._sock

    async def accept(self) -> anyio.abc.SocketStream:
        while True:
            await anyio.lowlevel.checkpoint()
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self._sock)
                except (anyio.ClosedResourceError, OSError):
                    raise anyio.ClosedResourceError from None
                continue
            except OSError as exc:
                if self._sock.fileno() < 0 or exc.errno == errno.EBADF:
                    raise anyio.ClosedResourceError from None
                raise
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return RawSocketStream(conn)

    async def aclose(self) -> None:
        anyio.notify_closing(self._sock)  # an accept waiting on it ends with ClosedResourceError
        with suppress(OSError):
            self._sock.close()
        await anyio.lowlevel.checkpoint()
