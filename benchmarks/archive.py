"""Session saving: the saver `coi shutdown` uses, on N running containers, against a baseline.

It makes N containers of the systemd test image with a ~/.claude each (bulk.py's `make`: a
settings file and a 64 KiB conversation, or `--files` more small files) in a throwaway project,
then saves all N at once (tar over exec, unpacked on the host, 8 at a time as in the commands)
with this checkout's coi and with `--baseline`'s (another checkout's python: the tree before a
change), in alternating order sample by sample after one untimed round of each. Each sample is
a fresh process that lists the containers and times only the saving; the containers stay the
same throughout, so both sides start from the same machine state.

    .venv/bin/python benchmarks/archive.py [--n 32] [--runs 8] [--files 0] --baseline OTHER/.venv/bin/python
"""

from __future__ import annotations

import argparse
import functools
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from bulk import PREFIX, make, names_for
from fixtures import throwaway_project
from paired import paired

from coi_async.config import resolve_config
from coi_async.incus import IncusClient
from coi_async.naming import PREFIX_ENV
from coi_async.orchestration.bulk import lifecycle as lc
from coi_async.orchestration.runner import ItemContext, run_bulk
from coi_async.orchestration.sessions.store import SessionStore
from coi_async.tools import get_tool


async def save_all(project: str) -> None:
    """One sample (in its own process): save every container of `project`, print the seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as home:
        await _save_all(project, home)


async def _save_all(project: str, home: str) -> None:
    tool = get_tool("claude")
    config = resolve_config([], {PREFIX_ENV: PREFIX}, home=home)
    saver = lc.SessionSaver(SessionStore(Path(home) / ".coi" / "s", config_dir=tool.config_dir), tool, config)
    async with IncusClient.connect(project=project) as incus:
        instances = {i.name: i for i in await incus.list_instances() if i.name.startswith(PREFIX)}

        async def save(ctx: ItemContext) -> None:
            await saver.save(incus, instances[ctx.name])

        start = time.perf_counter()
        report = await run_bulk(list(instances), save, limit=8, per_item_s=120)
        elapsed = time.perf_counter() - start
    if report.failed:
        raise SystemExit(f"save failures: {[(r.item, r.error) for r in report.failed]}")
    print(f"{elapsed:.4f}")


def sample(python: str, project: str) -> float:
    done = subprocess.run(
        [python, __file__, "--sample", project], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{python}: {done.stderr.strip()[-500:]}")
    return float(done.stdout)


async def main(opts: argparse.Namespace) -> None:
    project = f"bench-archive-{secrets.token_hex(3)}"
    async with IncusClient.connect() as root, throwaway_project(root, project, grace_s=300) as incus:
        names = names_for(opts.n)
        await make(incus, names, opts.image, systemd=True)
        if opts.files:
            script = f"cd /home/code/.claude && for i in $(seq {opts.files}); do echo $i > f$i; done"
            async with anyio.create_task_group() as tg:
                for name in names:
                    tg.start_soon(incus.exec, name, ["sh", "-c", script])
        pythons = {"coi": sys.executable} | ({"baseline": opts.baseline} if opts.baseline else {})
        # Each sample's own timing of the saving, not its process's: start-up is not compared.
        times: dict[str, list[float]] = {key: [] for key in pythons}

        def side(key: str) -> None:
            times[key].append(sample(pythons[key], project))

        sides = {key: functools.partial(side, key) for key in pythons}
        await anyio.to_thread.run_sync(lambda: paired(sides, opts.runs))
    # The first sample of each side is paired's untimed warm-up round.
    runs = {key: samples[-opts.runs :] for key, samples in times.items()}
    print(
        f"{opts.n} containers, ~/.claude with {opts.files} extra files, {opts.runs} alternating runs, medians:"
    )
    for key, samples in runs.items():
        print(
            f"  {key:<9} {statistics.median(samples):7.3f} s  (min {min(samples):.3f}, max {max(samples):.3f})"
        )
    if opts.baseline:
        ratio = statistics.median(runs["coi"]) / statistics.median(runs["baseline"])
        print(f"  ratio coi / baseline {ratio:5.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--files", type=int, default=0, help="extra small files in each ~/.claude")
    parser.add_argument("--image", default="coi-test-debian")
    parser.add_argument("--baseline", default="", help="another checkout's python, timed alongside")
    parser.add_argument("--sample", default="", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.sample:
        anyio.run(save_all, opts.sample)
    else:
        anyio.run(main, opts)
