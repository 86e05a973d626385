"""The session listener made inside a network namespace (egress/netns.py), in this process's own
namespace: served like the session's socket, sharing its connection limit, refused when the
namespace is not the one asked for, and closed when the place goes. Needs root, as the daemon
does (the suite runs as root, beside incusd)."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest

from coi_async.egress.connection import Limits
from tests.unit.egress_helpers import GOOD, ask, free_port, inside_here, send_and_read_to_end, served


async def ask_tcp(port: int, request: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        return await send_and_read_to_end(stream, request)


async def test_a_listener_inside_is_served_like_the_session_socket(tmp_path: Path) -> None:
    port = free_port()
    async with served(tmp_path, inside=inside_here(port)) as (server, world, socket_path):
        assert (await ask_tcp(port, GOOD)).endswith(b"origin")
        assert (await ask(socket_path, GOOD)).endswith(b"origin")
        assert [r.session for r in world.records] == ["c1", "c1"]
        assert server.status()[0]["inside"] is True


async def test_idle_connections_on_the_socket_cannot_keep_out_one_made_inside(tmp_path: Path) -> None:
    port = free_port()
    limits = Limits(head_s=60)
    async with served(tmp_path, limits=limits, inside=inside_here(port)) as (server, _world, socket_path):
        idle = [await anyio.connect_unix(socket_path) for _ in range(500)]
        try:
            await anyio.sleep(0.2)  # the flood accepted, the slot waiting inside the oldest
            with anyio.fail_after(5):
                assert (await ask_tcp(port, GOOD)).endswith(b"origin")
        finally:
            for stream in idle:
                await stream.aclose()
        assert server.status()[0]["evicted"] > 0


async def test_a_namespace_that_is_not_the_one_asked_for_is_refused(tmp_path: Path) -> None:
    port = free_port()
    wrong = msgspec.structs.replace(inside_here(port), inode=1)
    async with served(tmp_path, inside=wrong) as (server, _world, _socket):
        status = server.status()[0]
        assert status["inside"] is False
        assert "no longer the container's init" in str(status["inside_error"])
        with pytest.raises(OSError, match="connection attempts failed"):
            await anyio.connect_tcp("127.0.0.1", port)


async def test_a_place_that_goes_closes_its_listener(tmp_path: Path) -> None:
    port = free_port()
    async with served(tmp_path, inside=inside_here(port)) as (server, _world, _socket):
        (spec,) = server.sessions.values()
        await server.apply([msgspec.structs.replace(spec, inside=None)])
        with pytest.raises(OSError, match="connection attempts failed"):
            await anyio.connect_tcp("127.0.0.1", port)
        assert server.status()[0]["inside"] is False
