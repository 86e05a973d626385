"""Exec stress: many concurrent execs through the client, each checked for lost output.

Every exec prints a token of its own on stdout and another on stderr and exits 0; an exec whose
exit code or either stream is not exactly what it sent is a loss (the failure README.md's note on
incusd's exec streams describes: output written before the client was reading, ~1% under load
before the client connected the output streams first). Execs are spread over a few busybox
containers in a throwaway project, `--concurrency` at a time. Prints the count of execs and of
losses, and any loss's first few details.

    .venv/bin/python benchmarks/exec_stress.py [--execs 2200] [--concurrency 50] [--containers 4]
"""

from __future__ import annotations

import argparse
import secrets
import time

import anyio
from fixtures import launch, throwaway_project

from coi_async.errors import CoiError
from coi_async.incus import IncusClient


async def main(opts: argparse.Namespace) -> None:
    names = [f"stress-{i}" for i in range(opts.containers)]
    losses: list[str] = []
    errors: list[str] = []
    done = 0
    async with (
        IncusClient.connect() as root,
        throwaway_project(root, f"bench-x-{secrets.token_hex(3)}") as incus,
    ):
        await launch(incus, opts.image, *names)
        limiter = anyio.CapacityLimiter(opts.concurrency)

        async def one(i: int) -> None:
            nonlocal done
            out, err = f"out-{i}-{secrets.token_hex(4)}", f"err-{i}-{secrets.token_hex(4)}"
            async with limiter:
                try:
                    result = await incus.exec(
                        names[i % len(names)], ["sh", "-c", f"echo -n {out}; echo -n {err} >&2"]
                    )
                except CoiError as exc:
                    errors.append(f"exec {i}: {exc}")
                    return
            done += 1
            if (result.exit_code, result.stdout, result.stderr) != (0, out.encode(), err.encode()):
                losses.append(f"exec {i}: exit {result.exit_code}, {result.stdout!r}, {result.stderr!r}")

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(opts.execs):
                tg.start_soon(one, i)
        elapsed = time.perf_counter() - began

    print(
        f"{opts.execs} execs, {opts.concurrency} at a time over {opts.containers} containers "
        f"({opts.image}), {elapsed:.1f} s: {len(losses)} losses (output or exit code not as sent), "
        f"{len(errors)} errors (exec not completed), {done} completed"
    )
    for line in (losses + errors)[:10]:
        print(f"  {line}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--execs", type=int, default=2200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--containers", type=int, default=4)
    parser.add_argument("--image", default="coi-test-busybox")
    anyio.run(main, parser.parse_args(), backend="asyncio")
