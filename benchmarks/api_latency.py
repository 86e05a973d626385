"""API latency: like against like, in two separate comparisons.

1. Fresh process per call, both sides: a one-shot Python process that imports the async client,
   connects and makes the call, against the `incus` command doing the same (one process per call,
   as the reference tool does). Start-up counts on both sides.
2. In process, connection kept open, both sides: the async client as coi uses it (one connection,
   msgspec structs, operation waits) against the floor, bare aiohttp requests on one kept-open
   unix-socket connection with no client logic at all (the REST calls only; the exec floor starts
   the command without output streams and waits for it).

For get-instance, exec of `true` and create+start+delete, each pair is timed alternately, sample
by sample, after one untimed round (benchmarks/paired.py); prints the medians and the ratio.

    .venv/bin/python benchmarks/api_latency.py [--runs 20] [--image coi-test-busybox]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
from fixtures import launch, post, throwaway_project
from paired import median_ms, paired, paired_async

from coi_async.incus import IncusClient, resolve_socket

# One call through the client in a fresh process: argv[1] is the job, argv[2:] its arguments.
ONE_SHOT = """
import sys, anyio
from coi_async.incus import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost

async def main(job, project, name, image):
    async with IncusClient.connect(project=project) as c:
        if job == "get":
            await c.get_instance(name)
        elif job == "exec":
            assert (await c.exec(name, ["true"])).exit_code == 0
        else:
            post = InstancesPost(name=name, source=InstanceSource(type="image", alias=image), start=True)
            await c.create_instance(post)
            await c.stop_instance(name, force=True)
            await c.delete_instance(name)

anyio.run(main, *sys.argv[1:], backend="asyncio")
"""


def run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:4])} ... failed ({done.returncode}): {done.stderr.decode().strip()}"
        )


def incus(*args: str) -> None:
    run(["incus", *args])


def one_shot(job: str, project: str, name: str, image: str) -> None:
    run([sys.executable, "-c", ONE_SHOT, job, project, name, image])


def report(label: str, times: dict[str, list[float]], a: str, b: str) -> None:
    ma, mb = median_ms(times[a]), median_ms(times[b])
    print(f"  {label:<22} {a} {ma:8.1f} ms   {b} {mb:8.1f} ms   ratio {a}/{b} {ma / mb:5.2f}")


class Floor:
    """The REST calls alone, on one kept-open aiohttp connection to the unix socket."""

    def __init__(self, session: aiohttp.ClientSession, project: str) -> None:
        self.session = session
        self.project = project

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        sep = "&" if "?" in path else "?"
        url = f"http://incus{path}{sep}project={self.project}"
        async with self.session.request(method, url, json=body) as response:
            data = json.loads(await response.read())
        if data.get("type") == "error":
            raise SystemExit(f"floor: {method} {path}: {data.get('error')}")
        return data

    async def wait(self, data: Any) -> None:
        answer = await self.call("GET", f"{data['operation']}/wait?timeout=60")
        if answer["metadata"]["status"] != "Success":
            raise SystemExit(f"floor: operation failed: {answer['metadata'].get('err')}")

    async def get(self, name: str) -> None:
        await self.call("GET", f"/1.0/instances/{name}")

    async def exec(self, name: str) -> None:
        body = {
            "command": ["true"],
            "wait-for-websocket": False,
            "record-output": False,
            "interactive": False,
        }
        await self.wait(await self.call("POST", f"/1.0/instances/{name}/exec", body))

    async def cycle(self, name: str, image: str) -> None:
        post = {"name": name, "source": {"type": "image", "alias": image}, "start": True}
        await self.wait(await self.call("POST", "/1.0/instances", post))
        stop = {"action": "stop", "force": True}
        await self.wait(await self.call("PUT", f"/1.0/instances/{name}/state", stop))
        await self.wait(await self.call("DELETE", f"/1.0/instances/{name}"))


async def main(runs: int, image: str) -> None:
    project = f"bench-{secrets.token_hex(3)}"
    counter = iter(range(10**6))

    def fresh(stem: str) -> str:
        return f"{stem}-{next(counter)}"

    async with IncusClient.connect() as root, throwaway_project(root, project) as client:
        base = f"lat-{secrets.token_hex(2)}"
        socket = str(resolve_socket(os.environ).socket)
        await launch(client, image, base)
        cycles = max(3, runs // 4)
        print(f"{runs} runs each ({cycles} for create+start+delete), image {image}, project {project}")

        print("1. fresh process per call: a one-shot python using the client vs the incus command")

        async def both(label: str, sides: dict[str, Callable[[], None]], n: int) -> None:
            times = await anyio.to_thread.run_sync(lambda: paired(sides, n))
            report(label, times, "python+client", "incus")

        await both(
            "get instance",
            {
                "python+client": lambda: one_shot("get", project, base, image),
                "incus": lambda: incus("query", f"/1.0/instances/{base}?project={project}"),
            },
            runs,
        )
        await both(
            "exec true",
            {
                "python+client": lambda: one_shot("exec", project, base, image),
                "incus": lambda: incus("--project", project, "exec", base, "--", "true"),
            },
            runs,
        )

        def cli_cycle() -> None:
            name = fresh(f"{base}-i")
            incus("--project", project, "launch", image, name, "-q")
            incus("--project", project, "delete", "--force", name)

        await both(
            "create+start+delete",
            {
                "python+client": lambda: one_shot("cycle", project, fresh(f"{base}-p"), image),
                "incus": cli_cycle,
            },
            cycles,
        )

        print("2. in process, one kept-open connection: the client vs bare aiohttp REST calls (floor)")
        connector = aiohttp.UnixConnector(path=socket, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            floor = Floor(session, project)

            async def client_cycle() -> None:
                name = fresh(f"{base}-c")
                await client.create_instance(post(name, image))
                await client.stop_instance(name, force=True)
                await client.delete_instance(name)

            pairs: list[tuple[str, Callable[[], Awaitable[object]], Callable[[], Awaitable[object]], int]] = [
                ("get instance", lambda: client.get_instance(base), lambda: floor.get(base), runs),
                ("exec true", lambda: client.exec(base, ["true"]), lambda: floor.exec(base), runs),
                (
                    "create+start+delete",
                    client_cycle,
                    lambda: floor.cycle(fresh(f"{base}-f"), image),
                    cycles,
                ),
            ]
            for label, with_client, bare, n in pairs:
                times = await paired_async({"client": with_client, "floor": bare}, n)
                report(label, times, "client", "floor")
        print("  (the exec floor runs `true` without output streams; the client connects stdout/stderr)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--image", default="coi-test-busybox")
    args = parser.parse_args()
    anyio.run(main, args.runs, args.image, backend="asyncio")
