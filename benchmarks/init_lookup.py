"""Finding a container's init for the egress daemon: on the host against asking incusd.

Each round starts `--containers` Debian containers at once (as `coi fork -n 4` does) and, while
they boot, asks for the init of each of them both ways, alternately, the order reversed every
other container and round:

- host: `egress/container_init.py`, the daemon's way (a few /proc and cgroup reads, in a worker
  thread as the daemon makes them);
- reference: `GET /1.0/instances/NAME/state` on a kept-open connection, the only place incusd's
  API gives the pid, and the daemon's way before;

then, the containers booted, the same once more ("idle"). Both ways must find the same pid.
There is no floor below the host's reads (they are what any lookup of a pid has to do). Prints
the medians of each and the ratio.

    .venv/bin/python benchmarks/init_lookup.py [--rounds 5] [--containers 4] [--image coi-test-debian]

It works in a throwaway project (sharing the default project's images and profiles) that it
removes at the end, with everything in it. Needs root (it reads the monitors' /proc entries).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time

import anyio
import anyio.to_thread
from fixtures import clear, launch, throwaway_project

from coi_async.egress.container_init import incus_lxcpath, init_on_host
from coi_async.incus import IncusClient


async def lookups(
    incus: IncusClient, lxcpath: str, project: str, names: list[str], flip: bool
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"host": [], "reference": []}
    for i, name in enumerate(names):
        pids: dict[str, int] = {}
        order = ["host", "reference"] if (i % 2 == 0) != flip else ["reference", "host"]
        for side in order:
            start = time.perf_counter()
            if side == "host":
                found = await anyio.to_thread.run_sync(init_on_host, lxcpath, project, name)
                pids[side] = found[0] if found else 0
            else:
                pids[side] = (await incus.get_instance_state(name)).pid
            times[side].append(time.perf_counter() - start)
        if pids["host"] != pids["reference"]:
            raise SystemExit(f"{name}: the host found pid {pids['host']}, incusd says {pids['reference']}")
    return times


async def bench(opts: argparse.Namespace) -> None:
    project = f"bench-i-{secrets.token_hex(3)}"
    booting: dict[str, list[float]] = {"host": [], "reference": []}
    idle: dict[str, list[float]] = {"host": [], "reference": []}
    async with IncusClient.connect() as root, throwaway_project(root, project) as incus:
        lxcpath = incus_lxcpath((await incus.server_info()).environment.server_pid)
        if lxcpath is None:
            raise SystemExit("incusd is not a process of this machine that the host can look at")
        for round_no in range(1 + opts.rounds):  # the first is a warm-up
            names = [f"init-{round_no}-{i}" for i in range(opts.containers)]
            await launch(incus, opts.image, *names)
            during = await lookups(incus, lxcpath, project, names, round_no % 2 == 1)
            await anyio.sleep(opts.settle)
            after = await lookups(incus, lxcpath, project, names, round_no % 2 == 0)
            if round_no:
                for side in booting:
                    booting[side] += during[side]
                    idle[side] += after[side]
            await clear(incus)
    print(f"image {opts.image}, {opts.containers} containers started at once, {opts.rounds} rounds; medians:")
    for label, times in (("while they boot", booting), ("booted", idle)):
        host, ref = (statistics.median(times[s]) * 1000 for s in ("host", "reference"))
        print(
            f"  {label:<16} host {host:7.2f} ms   incusd state {ref:7.2f} ms   ratio host/incusd {host / ref:5.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", "--runs", type=int, default=5)
    parser.add_argument("--containers", type=int, default=4)
    parser.add_argument("--image", default="coi-test-debian")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of boot before the idle lookups")
    anyio.run(bench, parser.parse_args())


if __name__ == "__main__":
    main()
