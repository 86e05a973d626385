"""The egress server over its per-session unix sockets: strict parsing, the decision before any
connect, the connection to the exact address checked, limits, fuzzing, live policy, cleanup.

No test here reaches the network: names resolve through a fake resolver, and every connection
the server makes goes through a fake connector to an origin on loopback, which records the
address the server asked for.
"""

from __future__ import annotations

import ipaddress
import os
import random
from contextlib import suppress
from pathlib import Path

import anyio
import anyio.abc
import msgspec
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from coi_async.config.network import parse_entries
from coi_async.egress.connection import ConnectionRecord, Limits
from coi_async.egress.logfile import read_records
from coi_async.egress.policy import Policy
from coi_async.egress.server import EgressServer, SessionSpec
from tests.unit.egress_helpers import GOOD, PUBLIC, ask, served


async def test_a_public_name_is_resolved_once_and_the_checked_address_connected(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, world, socket):
        reply = await ask(socket, GOOD)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert reply.endswith(b"origin")
    assert world.resolved == ["public.test"]
    assert world.connected == [(str(PUBLIC), 80)]
    (record,) = world.records
    assert (record.session, record.project, record.decision, record.address, record.connected) == (
        "c1",
        "p",
        "allowed",
        str(PUBLIC),
        True,
    )
    assert record.bytes_down > 0


async def test_a_rebinding_name_is_refused_without_a_connect(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, world, socket):
        # The first answer is public, the second would be loopback: it is asked only once, and
        # any non-public answer spoils the whole name.
        world.answers["rebind.test"] = [[PUBLIC, ipaddress.ip_address("127.0.0.1")]]
        reply = await ask(socket, b"CONNECT rebind.test:443 HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 403 Forbidden")
    assert b"rebind.test resolves to 127.0.0.1, which is a loopback address" in reply
    assert world.connected == []
    assert (world.records[0].stage, world.records[0].connected) == ("policy", False)


@pytest.mark.parametrize(
    ("request_bytes", "status", "fragment"),
    [
        (b"CONNECT 10.1.2.3:443 HTTP/1.1\r\n\r\n", b"403", b"10.1.2.3 is a private address"),
        (b"GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\n\r\n", b"403", b"cloud metadata address"),
        (b"CONNECT [::ffff:127.0.0.1]:22 HTTP/1.1\r\n\r\n", b"403", b"loopback address"),
        (b"GET http://public.test\x00.evil/ HTTP/1.1\r\n\r\n", b"400", b"NUL byte"),
        (b"GET http://public.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n", b"400", b"the Host header names"),
        (b"GET http://public.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400", b"more than one Host"),
        (b"GET http://u:p@public.test/ HTTP/1.1\r\n\r\n", b"400", b"user names and passwords"),
        (b"GET http://pub_lic.test/ HTTP/1.1\r\n\r\n", b"400", b"only letters, digits"),
        (b"GET http://127.1/ HTTP/1.1\r\n\r\n", b"400", b"not a dotted-quad"),
        (b"GET /relative HTTP/1.1\r\nHost: public.test\r\n\r\n", b"400", b"absolute http://"),
        (b"GET https://public.test/ HTTP/1.1\r\n\r\n", b"400", b"through CONNECT"),
        (b"GET http://public.test/ HTTP/2.0\r\n\r\n", b"400", b"malformed request line"),
        (b"GET http://public.test/ HTTP/1.1\r\n folded: yes\r\n\r\n", b"400", b"folded"),
        (b"GET http://public.test/ HTTP/1.1\r\nX: a\rb\r\n\r\n", b"400", b"bare CR"),
        (b"GET http://public.test/ HTTP/1.1\r\nBad Name: v\r\n\r\n", b"400", b"malformed header"),
        (
            b"POST http://public.test/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"400",
            b"both Content-Length and Transfer-Encoding",
        ),
        (b"GET http://public.test/ HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", b"431", b"more than 100"),
        (b"GET http://public.test/ HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n", b"431", b"longer than"),
        (b"GET http://public.test/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"400", b"malformed request line"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400", b"NUL byte"),
        (b"\x16\x03\x01\x02\xfc\x03\x03\r\n\r\n", b"400", b"malformed request line"),
        (b"CONNECT nowhere.test:443 HTTP/1.1\r\n\r\n", b"502", b"cannot resolve nowhere.test"),
    ],
)
async def test_bad_and_refused_requests_get_an_answer_and_the_next_one_is_served(
    tmp_path: Path, request_bytes: bytes, status: bytes, fragment: bytes
) -> None:
    async with served(tmp_path) as (_, world, socket):
        reply = await ask(socket, request_bytes)
        assert reply.split(b" ", 2)[1] == status, reply
        assert fragment in reply, reply
        assert world.connected == []
        assert (await ask(socket, GOOD)).endswith(b"origin")


async def test_random_and_mutated_heads_never_stop_the_server(tmp_path: Path) -> None:
    rng = random.Random(11)
    alphabet = b"GETPOSTCONNECThttp://[]:@%.-_ \r\n\t\x00\x7f\xffHost:a1/?#"
    valid = GOOD.split(b"\r\n\r\n")[0]
    async with served(tmp_path, limits=Limits(head_s=0.5)) as (_, world, socket):
        for i in range(300):
            if i % 3 == 0:
                head = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 300)))
            elif i % 3 == 1:
                head = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            else:
                mutated = bytearray(valid)
                for _ in range(rng.randrange(1, 6)):
                    mutated[rng.randrange(len(mutated))] = rng.randrange(256)
                head = bytes(mutated)
            reply = await ask(socket, head + b"\r\n\r\n")
            assert reply == b"" or reply.startswith(b"HTTP/1.1 "), (head, reply)
        # Every answer came from the server's own checks: nothing but the one good name was
        # resolved, nothing connected anywhere else.
        assert set(world.resolved) <= {"public.test"}
        assert {address for address, _ in world.connected} <= {str(PUBLIC)}
        assert (await ask(socket, GOOD)).endswith(b"origin")


async def test_500_idle_connections_cannot_stop_a_new_one(tmp_path: Path) -> None:
    async with served(tmp_path, limits=Limits(head_s=60)) as (server, _world, socket):
        idle = [await anyio.connect_unix(socket) for _ in range(500)]
        try:
            with anyio.fail_after(5):
                assert (await ask(socket, GOOD)).endswith(b"origin")
            status = server.status()[0]
            assert status["active"] <= 128
            assert status["evicted"] > 0
        finally:
            for stream in idle:
                await stream.aclose()


async def test_a_slow_head_is_cut_off(tmp_path: Path) -> None:
    async with served(tmp_path, limits=Limits(head_s=0.3)) as (_, world, socket):
        with anyio.fail_after(5):
            async with await anyio.connect_unix(socket) as stream:
                await stream.send(b"GET http://public.test/ HTTP/1.1\r\n")
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await stream.receive()
    assert world.records[0].reason.startswith("no whole request head within 0.3s")


async def test_a_crash_in_one_connection_is_recorded_and_the_next_is_served(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, world, socket):
        world.fail_connect = RuntimeError("bug")
        assert await ask(socket, GOOD) == b""
        world.fail_connect = None
        assert (await ask(socket, GOOD)).endswith(b"origin")
    assert world.records[0].reason == "internal error: RuntimeError('bug')"


async def test_a_new_policy_applies_to_the_next_request(tmp_path: Path) -> None:
    allowlist = Policy(mode="allowlist", allow=parse_entries(["other.test"]))
    async with served(tmp_path, allowlist) as (server, _world, socket):
        assert (await ask(socket, GOOD)).startswith(b"HTTP/1.1 403")
        (spec,) = server.sessions.values()
        widened = Policy(mode="allowlist", allow=parse_entries(["other.test", "public.test"]))
        await server.apply([msgspec.structs.replace(spec, policy=widened)])
        assert (await ask(socket, GOOD)).endswith(b"origin")


def _open_files() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return found


async def test_a_session_that_goes_leaves_no_socket_log_handle_or_connection(tmp_path: Path) -> None:
    async with served(tmp_path) as (server, _world, socket):
        log = str(tmp_path / "logs" / "c1.jsonl")
        assert (await ask(socket, GOOD)).endswith(b"origin")
        assert log in _open_files()
        held = await anyio.connect_unix(socket)
        await server.apply([])
        assert not os.path.exists(socket)
        assert log not in _open_files()
        with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await held.receive()
        await held.aclose()
    records = list(read_records(log))
    assert [r.decision for r in records][:1] == ["allowed"]
    assert records[0].host == "public.test"


async def test_a_client_that_leaves_mid_download_ends_an_allowed_connection(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, world, socket):
        with anyio.fail_after(10):
            async with await anyio.connect_unix(socket) as stream:
                await stream.send(b"GET http://public.test/big HTTP/1.1\r\n\r\n")
                got = 0
                while got < 1 << 20:
                    got += len(await stream.receive())
        with anyio.fail_after(10):
            while True:
                if world.records:
                    break
                await anyio.sleep(0.05)
        assert (await ask(socket, GOOD)).endswith(b"origin")
    record = world.records[0]
    assert (record.decision, record.stage, record.reason) == ("allowed", "relay", "")
    assert record.bytes_down >= 1 << 20


async def _big_origin(stream: anyio.abc.SocketStream) -> None:
    """`GET /len` answers 8 MiB with a Content-Length, `GET /eof` 8 MiB until it closes, and any
    other first line (a CONNECT tunnel's) gets its bytes back upper-cased."""
    async with stream:
        reader = BufferedByteReceiveStream(stream)
        with suppress(
            anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound, anyio.BrokenResourceError
        ):
            head = await reader.receive_until(b"\r\n\r\n", 65536)
            if head.startswith((b"GET /len", b"GET /eof")):
                length = b"Content-Length: %d\r\n" % BIG if head.startswith(b"GET /len") else b""
                await stream.send(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n")
                for i in range(BIG // 65536):
                    await stream.send(bytes([i % 251]) * 65536)
                return
            await stream.send(head.upper() + b"!")
            while True:
                await stream.send((await reader.receive()).upper())


BIG = 8 << 20


@pytest.mark.parametrize("path", ["/len", "/eof"])
async def test_bodies_and_tunnels_are_spliced_byte_for_byte(tmp_path: Path, path: str) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    records: list[ConnectionRecord] = []
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _big_origin)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        server = EgressServer(on_record=records.append)  # the real connector: spliceable sockets
        policy = Policy(mode="allowlist", allow=parse_entries([f"127.0.0.1:{port}"]))
        socket = str(tmp_path / "s.sock")
        async with server.running():
            await server.apply([SessionSpec(key="k", socket=socket, policy=policy)])
            reply = await ask(socket, f"GET http://127.0.0.1:{port}{path} HTTP/1.1\r\n\r\n".encode())
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert len(body) == BIG
            assert body == b"".join(bytes([i % 251]) * 65536 for i in range(BIG // 65536))
            with anyio.fail_after(10):
                async with await anyio.connect_unix(socket) as stream:
                    await stream.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nhello ".encode())
                    reader = BufferedByteReceiveStream(stream)
                    assert (
                        await reader.receive_until(b"\r\n\r\n", 1024)
                        == b"HTTP/1.1 200 Connection established"
                    )
                    await stream.send(b"tunnel\r\n\r\n" + b"z" * 300_000)
                    assert await reader.receive_exactly(13) == b"HELLO TUNNEL!"
                    assert await reader.receive_exactly(300_000) == b"Z" * 300_000
        tg.cancel_scope.cancel()
    assert records[0].bytes_down >= BIG
    assert records[1].bytes_up == len(b"hello tunnel\r\n\r\n") + 300_000
