"""API latency: the async client against the `incus` command, in the same run.

For get-instance, create+start+delete, and exec of `true`, prints the median over repeated runs
through the client (one connection, as coi uses it) and through `incus` as a subprocess (one
process per call, as the reference tool does), and their ratio.

    .venv/bin/python benchmarks/api_latency.py [--runs 20] [--image coi-test-busybox]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

import anyio

from coi_async.incus import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost


def incus(*args: str) -> None:
    subprocess.run(["incus", *args], check=True, capture_output=True)


async def timed_async(fn: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return samples


def timed_sync(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def report(label: str, client: list[float], cli: list[float]) -> None:
    c, i = statistics.median(client), statistics.median(cli)
    print(
        f"{label:<22} client {c * 1000:8.1f} ms   incus {i * 1000:8.1f} ms   "
        f"ratio {c / i:5.2f}  ({i / c:4.1f}x faster)"
    )


async def main(runs: int, image: str) -> None:
    project = f"bench-{secrets.token_hex(3)}"
    async with IncusClient.connect() as root:
        await root.create_project(project, config={"features.images": "false", "features.profiles": "false"})
        client = root.in_project(project)
        base = f"lat-{secrets.token_hex(2)}"
        try:
            await client.create_instance(
                InstancesPost(name=base, source=InstanceSource(type="image", alias=image), start=True)
            )
            print(f"{runs} runs each, image {image}, project {project}")

            report(
                "get instance",
                await timed_async(lambda: client.get_instance(base), runs),
                timed_sync(lambda: incus("query", f"/1.0/instances/{base}?project={project}"), runs),
            )
            report(
                "exec true",
                await timed_async(lambda: client.exec(base, ["true"]), runs),
                timed_sync(lambda: incus("--project", project, "exec", base, "--", "true"), runs),
            )

            counter = iter(range(10**6))

            async def client_cycle() -> None:
                name = f"{base}-c{next(counter)}"
                await client.create_instance(
                    InstancesPost(name=name, source=InstanceSource(type="image", alias=image), start=True)
                )
                await client.stop_instance(name, force=True)
                await client.delete_instance(name)

            def cli_cycle() -> None:
                name = f"{base}-i{next(counter)}"
                incus("--project", project, "launch", image, name, "-q")
                incus("--project", project, "delete", "--force", name)

            cycles = max(3, runs // 4)
            report(
                "create+start+delete",
                await timed_async(client_cycle, cycles),
                timed_sync(cli_cycle, cycles),
            )
        finally:
            with anyio.move_on_after(60, shield=True):
                for instance in await client.list_instances():
                    if instance.running:
                        await client.stop_instance(instance.name, force=True)
                    await client.delete_instance(instance.name)
                await root.delete_project(project)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--image", default="coi-test-busybox")
    args = parser.parse_args()
    anyio.run(main, args.runs, args.image, backend="asyncio")
