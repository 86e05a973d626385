"""`coi top` and `coi events` over a fleet: what one refresh costs, and how soon an agent's state shows.

`--sessions` running containers (busybox) named and stamped like Claude Code sessions, each with
the agent-state record its hooks write, in a throwaway project. Prints:

- one `coi top` refresh in-process (the listing, the agents' records, the rows) against the
  listing alone (`recursion=2`, the floor: what any view of CPU and memory costs), interleaved
  after a warm-up, medians; and `coi top --once --format json` as a command against `incus list
  --format json` of the same project (both fresh processes; `--once` takes two samples 0.5 s
  apart, so it is the floor plus that pause);
- the requests one refresh makes to incusd, counted for a quarter, half and all of the fleet:
  the listing is one request whatever the size; each session whose tool reports state costs a
  HEAD and a GET of its record (nothing is read from a session whose tool reports nothing);
- from a hook's command starting (it writes a record) to `coi events --format json` printing the
  `agent-state` event: p50 and p99 over `--changes` changes (coi polls the records once a
  second: the floor is the poll's own spread, up to 1 s).

    .venv/bin/python benchmarks/fleet.py [--sessions 64] [--runs 5] [--changes 20]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from fixtures import throwaway_project
from paired import median_ms, paired, paired_async

from coi_async.agent_state import WAITING, WORKING, hook_command
from coi_async.config.merge import resolve_config
from coi_async.incus import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost
from coi_async.naming import KEY_SESSION, KEY_TOOL, KEY_WORKSPACE
from coi_async.orchestration.fleet.snapshot import rows, sample_agents, take_sample

COI = str(Path(sys.executable).with_name("coi"))
HOME = "/home/code"


class Counting:
    """The client's transport, counting every request made through it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.count = 0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return value(*args, **kwargs)

        return counted


async def make_fleet(incus: IncusClient, prefix: str, n: int, image: str) -> list[str]:
    names = [f"{prefix}{secrets.token_hex(4)}-1" for _ in range(n)]
    config = {KEY_TOOL: "claude", KEY_WORKSPACE: "/tmp/bench-fleet"}

    async def one(name: str) -> None:
        keys = {**config, KEY_SESSION: str(uuid.uuid4())}
        source = InstanceSource(type="image", alias=image)
        await incus.create_instance(InstancesPost(name=name, source=source, start=True, config=keys))
        await write_record(incus, name, WORKING)

    limiter = anyio.CapacityLimiter(8)

    async def bounded(name: str) -> None:
        async with limiter:
            await one(name)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(bounded, name)
    return names


async def write_record(incus: IncusClient, name: str, state: str) -> None:
    done = await incus.exec(name, ["sh", "-c", hook_command(state, HOME)], stdin=b'{"message": "bench"}')
    if not done.ok:
        raise SystemExit(f"the hook failed in {name}: {done.stderr.decode(errors='replace')}")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode().strip()}")


async def latencies(incus: IncusClient, names: list[str], env: dict[str, str], changes: int) -> list[float]:
    """Seconds from a hook's command starting to its event on `coi events`, `changes` times."""
    process = await anyio.open_process(
        [COI, "events", "--format", "json"], env=env, stderr=subprocess.DEVNULL
    )
    buffer = b""
    pending: list[dict[str, Any]] = []
    assert process.stdout is not None

    async def until(check: Callable[[dict[str, Any]], bool]) -> None:
        nonlocal buffer
        while True:
            while pending:
                if check(pending.pop(0)):
                    return
            buffer += await process.stdout.receive()  # type: ignore[union-attr]
            *lines, buffer = buffer.split(b"\n")
            pending.extend(json.loads(line) for line in lines if line)

    found: list[float] = []
    try:
        with anyio.fail_after(60):
            await until(lambda e: e["type"] == "resync")
        for i in range(changes):
            name = names[i % len(names)]
            state = WAITING if (i // len(names)) % 2 == 0 else WORKING  # each starts working
            started = time.perf_counter()
            await write_record(incus, name, state)
            with anyio.fail_after(30):
                await until(
                    lambda e, n=name, s=state: (
                        e["type"] == "agent-state" and e["container"] == n and e["state"] == s
                    )
                )
            found.append(time.perf_counter() - started)
    finally:
        process.kill()
        await process.aclose()
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--image", default="coi-test-busybox")
    args = parser.parse_args()

    project = f"bench-fleet-{secrets.token_hex(3)}"
    prefix = f"bfl{secrets.token_hex(2)}-"
    async with IncusClient.connect() as root, throwaway_project(root, project) as incus:
        names = await make_fleet(incus, prefix, args.sessions, args.image)
        with tempfile.TemporaryDirectory() as home:
            env = {
                **os.environ,
                "HOME": home,
                "XDG_RUNTIME_DIR": home,
                "COI_CONTAINER_PREFIX": prefix,
                "COI_INCUS_PROJECT": project,
            }
            config = resolve_config([], env, home=home)

            async def refresh() -> None:
                sample = await take_sample(incus, prefix)
                rows(sample, None, config, await sample_agents(incus, sample, config))

            async def listing() -> None:
                await incus.list_instances(recursion=2)

            times = await paired_async({"refresh": refresh, "listing": listing}, args.runs)
            r, f = median_ms(times["refresh"]), median_ms(times["listing"])
            print(
                f"{args.sessions} sessions, {args.runs} interleaved runs after a warm-up, medians:\n"
                f"  one top refresh (in-process)   {r:8.1f} ms   listing alone (floor) {f:8.1f} ms"
                f"   ratio {r / f:5.2f}"
            )
            commands = await anyio.to_thread.run_sync(
                lambda: paired(
                    {
                        "coi": lambda: run([COI, "top", "--once", "--format", "json"], env),
                        "incus": lambda: run(
                            ["incus", "--project", project, "list", "--format", "json"], env
                        ),
                    },
                    args.runs,
                )
            )
            c, i = median_ms(commands["coi"]), median_ms(commands["incus"])
            print(
                f"  coi top --once --format json   {c:8.1f} ms   incus list --format json {i:8.1f} ms"
                f"   (coi includes its 500 ms between samples)"
            )

            for share in (4, 2, 1):
                counted = Counting(incus.transport)
                scoped = IncusClient(counted, project=project)
                chosen = names[: len(names) // share]
                keep = set(chosen)

                sample = await take_sample(scoped, prefix)
                listed = counted.count
                fewer = type(sample)(
                    taken=sample.taken, instances=tuple(x for x in sample.instances if x.name in keep)
                )
                await sample_agents(scoped, fewer, config)
                print(
                    f"  requests of one refresh, {len(chosen):3} reporting sessions: listing {listed}, "
                    f"records {counted.count - listed} ({(counted.count - listed) / max(len(chosen), 1):.1f} each)"
                )

            found = await latencies(incus, names, env, args.changes)
            print(
                f"  hook to agent-state event over {len(found)} changes: p50 {percentile(found, 0.5) * 1000:.0f} ms,"
                f" p99 {percentile(found, 0.99) * 1000:.0f} ms, mean {statistics.mean(found) * 1000:.0f} ms"
                f"   (coi polls once a second)"
            )


if __name__ == "__main__":
    anyio.run(main)
