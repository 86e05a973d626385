"""Egress daemon: throughput of one big download, and the latency it adds under concurrency.

1. Throughput: a `--size-mb` download (200 MB by default) from a server on host loopback, made
   by busybox wget inside an `open` session (through the daemon, which listens inside the
   container when it runs as root) against the same wget binary making the same download on
   the host. Goal: at least 0.8x. The floor of any proxy is printed beside it: the same wget on
   the host through a bare relay (a thread per direction splicing bytes, no HTTP, no policy),
   i.e. the cost of one more process touching every byte. `--repeat` downloads are timed as
   one sample, so /proc/uptime's 10 ms steps do not matter.
2. Latency: `--clients` concurrent clients (64) spread over `--sessions` sessions (8), each making
   `--requests` small requests (100): through each session's daemon socket against straight to
   the origin; p50/p99 per request and what the daemon adds, with the daemon's RSS and CPU.

Both sides of each comparison are timed alternately, round by round, after an untimed warm-up
(paired.py), against the same machine state. The sessions are `coi run --network open -- sleep`
processes with a HOME and runtime directory of their own, in a throwaway project.

    .venv/bin/python benchmarks/egress.py [--size-mb 200] [--rounds 3] [--sessions 8]
        [--attach proxy-device]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from pathlib import Path

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from fixtures import throwaway_project
from paired import paired_async

from coi_async.incus import IncusClient
from coi_async.orchestration.network import registry
from coi_async.orchestration.network.paths import EgressPaths
from coi_async.orchestration.network.plan import ATTACH_ENV, proxy_env

COI = str(Path(sys.executable).with_name("coi"))
CHUNK = b"x" * (256 * 1024)
SMALL = b"ok"


@asynccontextmanager
async def origin(size: int) -> AsyncIterator[int]:
    """`/big` is `size` bytes, anything else two; keep-alive off, as the daemon asks."""

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with suppress(anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound, OSError):
                head = await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
                big = b" /big " in head.split(b"\r\n", 1)[0] or b"/big HTTP" in head
                length = size if big else len(SMALL)
                await stream.send(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % length
                )
                if not big:
                    await stream.send(SMALL)
                    return
                left = size
                while left > 0:
                    piece = CHUNK[: min(left, len(CHUNK))]
                    await stream.send(piece)
                    left -= len(piece)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def sessions(
    project: str, count: int, image: str, attach: str
) -> AsyncIterator[tuple[dict[str, str], list[str]]]:
    """`count` open sessions (`coi run --network open -- sleep`); the coi environment and the
    container names."""
    root = Path(tempfile.mkdtemp(prefix="bench-egress-"))
    (root / "home").mkdir()
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COI_", "CLAUDE_ON_INCUS_"))},
        "HOME": str(root / "home"),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_CONFIG_HOME": str(root / "home" / ".config"),
        "COI_INCUS_PROJECT": project,
        "COI_CONTAINER_PREFIX": "bench-",
        "CLAUDE_ON_INCUS_IMAGE": image,
        "NO_COLOR": "1",
        **({ATTACH_ENV: attach} if attach else {}),
    }
    paths = EgressPaths.for_environment(env)
    processes = []
    try:
        for i in range(count):
            ws = root / f"ws{i}"
            ws.mkdir()
            processes.append(
                await anyio.open_process(
                    [COI, "run", "--network", "open", "--", "sleep", "3600"],
                    env=env,
                    cwd=ws,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with anyio.fail_after(180):
            while True:
                if len(registry.read_all(paths)) >= count:
                    break
                await anyio.sleep(0.5)
        names = sorted(r.container for r in registry.read_all(paths).values())
        yield env, names
    finally:
        with anyio.move_on_after(120, shield=True):
            for process in processes:
                with suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
            for process in processes:
                await process.wait()
            await anyio.run_process([COI, "egress", "stop"], env=env, check=False)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def bare_relay(port: int) -> Iterator[int]:
    """A TCP relay on host loopback to the origin: blocking splices, one thread per direction."""

    def pump(src: socket.socket, dst: socket.socket) -> None:
        read_end, write_end = os.pipe()
        with suppress(OSError):
            fcntl.fcntl(write_end, 1031, 1 << 20)  # F_SETPIPE_SZ: as large a pipe as the daemon's
        try:
            while moved := os.splice(src.fileno(), write_end, 1 << 20):
                while moved:
                    moved -= os.splice(read_end, dst.fileno(), moved)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            os.close(read_end)
            os.close(write_end)

    def serve(client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", port)) as upstream:
            up = threading.Thread(target=pump, args=(client, upstream), daemon=True)
            up.start()
            pump(upstream, client)
            up.join()

    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        with suppress(OSError):
            while True:
                client, _ = listener.accept()
                threading.Thread(target=serve, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


Connect = Callable[[], Awaitable[anyio.abc.ByteStream]]


def download(unix_socket: str | None, port: int) -> float:
    """Seconds to read `/big` to its end: through the daemon's socket, or straight from the origin."""
    started = time.perf_counter()
    if unix_socket is None:
        sock = socket.create_connection(("127.0.0.1", port))
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(unix_socket)
    with sock:
        sock.sendall(b"GET http://127.0.0.1:%d/big HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (port, port))
        buffer = bytearray(1 << 20)
        while sock.recv_into(buffer):
            pass
    return time.perf_counter() - started


async def request(connect: Connect, head: bytes) -> float:
    """One small GET on a new connection; seconds until the whole answer is in."""
    started = time.perf_counter()
    stream = await connect()
    async with stream:
        await stream.send(head)
        while True:
            try:
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    return time.perf_counter() - started


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def daemon_status(env: dict[str, str]) -> dict[str, object]:
    done = await anyio.run_process([COI, "egress", "status", "--format", "json"], env=env, check=False)
    return dict(json.loads(done.stdout))


def status_way(status: dict[str, object]) -> str:
    sessions = status.get("sessions")
    inside = isinstance(sessions, list) and all(s.get("inside") for s in sessions)
    return "listening inside the container" if inside else "via Incus's proxy device"


async def main(opts: argparse.Namespace) -> None:
    size = opts.size_mb * 1024 * 1024
    async with (
        AsyncExitStack() as stack,
        IncusClient.connect() as root,
        throwaway_project(root, f"bench-e-{secrets.token_hex(3)}") as incus,
        origin(size) as port,
        sessions(incus.project, opts.sessions, opts.image, opts.attach) as (env, names),
    ):

        def timed(url: str) -> str:
            # Timed where it runs (the exec's own ~70 ms stay out), by the same shell.
            downloads = "; ".join([f"wget -q -O /dev/null {url}"] * opts.repeat)
            return f"read s _ </proc/uptime; {downloads}; read e _ </proc/uptime; echo $s $e"

        url = f"http://127.0.0.1:{port}/big"
        relay = stack.enter_context(bare_relay(port))
        took: dict[str, list[float]] = {
            "daemon": [],
            "host": [],
            "floor": [],
            "daemon alone": [],
            "direct": [],
        }

        def elapsed(out: bytes) -> float:
            start, end = (float(x) for x in out.split())
            return max(end - start, 0.01)

        async def through_daemon() -> None:
            result = await incus.exec(names[0], ["sh", "-c", timed(url)], env=proxy_env())
            assert result.ok, result.stderr
            took["daemon"].append(elapsed(result.stdout))

        async def on_host() -> None:
            done = await anyio.run_process(["/bin/busybox", "sh", "-c", timed(url)], check=True)
            took["host"].append(elapsed(done.stdout))

        async def floor() -> None:
            relayed = f"http://127.0.0.1:{relay}/big"
            done = await anyio.run_process(["/bin/busybox", "sh", "-c", timed(relayed)], check=True)
            took["floor"].append(elapsed(done.stdout))

        first = next(iter(registry.read_all(EgressPaths.for_environment(env)).values())).socket

        async def daemon_alone() -> None:
            took["daemon alone"].append(await anyio.to_thread.run_sync(download, first, port))

        async def direct() -> None:
            took["direct"].append(await anyio.to_thread.run_sync(download, None, port))

        await paired_async(
            {
                "daemon": through_daemon,
                "host": on_host,
                "floor": floor,
                "daemon alone": daemon_alone,
                "direct": direct,
            },
            opts.rounds,
            warmup=1,
        )
        mb = size / 1e6
        speed = {side: mb / statistics.median(samples[-opts.rounds :]) for side, samples in took.items()}
        for side in ("daemon", "host", "floor"):
            speed[side] *= opts.repeat
        way = status_way(await daemon_status(env))
        print(f"throughput, {opts.size_mb} MB download x{opts.repeat}, median of {opts.rounds}:")
        print(f"  wget in an open session, through the daemon ({way}): {speed['daemon']:8.1f} MB/s")
        print(f"  the same wget on the host:                   {speed['host']:8.1f} MB/s")
        print(f"  the same wget on the host through a bare relay (floor): {speed['floor']:8.1f} MB/s")
        print(f"  ratio: {speed['daemon'] / speed['host']:.2f}x of the host (goal >= 0.8x),", end=" ")
        print(f"{speed['daemon'] / speed['floor']:.2f}x of the floor")
        print(f"  the daemon alone (a host client on the session socket): {speed['daemon alone']:8.1f} MB/s")
        print(f"  the same client straight to the origin:                 {speed['direct']:8.1f} MB/s")
        print(f"  ratio: {speed['daemon alone'] / speed['direct']:.2f}x")

        paths = EgressPaths.for_environment(env)
        sockets = [r.socket for r in registry.read_all(paths).values()]
        per_client = opts.requests
        latencies: dict[str, list[float]] = {"daemon": [], "direct": []}

        async def clients(side: str) -> None:
            async def client(i: int) -> None:
                socket = sockets[i % len(sockets)]

                async def connect_daemon() -> anyio.abc.ByteStream:
                    return await anyio.connect_unix(socket)

                async def connect_direct() -> anyio.abc.ByteStream:
                    return await anyio.connect_tcp("127.0.0.1", port)

                connect = connect_daemon if side == "daemon" else connect_direct
                head = b"GET http://127.0.0.1:%d/s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (port, port)
                for _ in range(per_client):
                    latencies[side].append(await request(connect, head))

            async with anyio.create_task_group() as tg:
                for i in range(opts.clients):
                    tg.start_soon(client, i)

        before = await daemon_status(env)
        rounds = await paired_async(
            {"daemon": lambda: clients("daemon"), "direct": lambda: clients("direct")}, opts.rounds, warmup=1
        )
        after = await daemon_status(env)
        total = opts.clients * per_client
        print(f"\nlatency, {opts.clients} clients over {len(sockets)} sessions, {per_client} requests each:")
        for side in ("daemon", "direct"):
            samples = latencies[side][-total * opts.rounds :]
            print(
                f"  {side:7s} p50 {pct(samples, 0.5):7.2f} ms  p99 {pct(samples, 0.99):7.2f} ms"
                f"  (round median {statistics.median(rounds[side]):.2f} s)"
            )
        d, o = latencies["daemon"][-total * opts.rounds :], latencies["direct"][-total * opts.rounds :]
        print(
            f"  added by the daemon: p50 {pct(d, 0.5) - pct(o, 0.5):.2f} ms, p99 {pct(d, 0.99) - pct(o, 0.99):.2f} ms"
        )
        cpu = float(str(after["cpu_s"])) - float(str(before["cpu_s"]))
        print(
            f"  daemon: max RSS {int(str(after['rss_kb'])) / 1024:.1f} MB, CPU {cpu:.2f} s for these rounds"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5, help="downloads per timed sample")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--image", default="coi-test-busybox")
    parser.add_argument(
        "--attach", default="", help="proxy-device: measure the way a coi not running as root goes"
    )
    anyio.run(main, parser.parse_args(), backend="asyncio")
