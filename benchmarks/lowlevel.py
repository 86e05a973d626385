"""Low-level one-shot commands: `coi` against the `incus` command doing the same, in the same run.

Each `coi` call is a fresh Python process, as a script would run it, so start-up counts; its own
line shows the start-up of `coi --version`. Prints the median over repeated runs and the ratio.

    .venv/bin/python benchmarks/lowlevel.py [--runs 10] [--size-mb 50] [--image coi-test-busybox]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

COI = str(Path(sys.executable).with_name("coi"))


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode().strip()}")


def timed(fn: Callable[[], None], runs: int) -> float:
    fn()  # warm caches (page cache, incusd), not measured
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def report(label: str, coi: float, incus: float) -> None:
    print(
        f"{label:<34} coi {coi * 1000:8.1f} ms   incus {incus * 1000:8.1f} ms   "
        f"ratio {coi / incus:5.2f}  ({incus / coi:4.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--image", default="coi-test-busybox")
    args = parser.parse_args()

    project = f"bench-h5-{secrets.token_hex(3)}"
    name = f"bench-{secrets.token_hex(2)}"
    env = {**os.environ, "INCUS_PROJECT": project}
    incus = ["incus", "--project", project]
    run(
        [
            "incus",
            "project",
            "create",
            project,
            "-c",
            "features.images=false",
            "-c",
            "features.profiles=false",
        ]
    )
    try:
        run([*incus, "launch", args.image, name])
        with tempfile.TemporaryDirectory() as tmp:
            blob = Path(tmp) / "blob.bin"
            blob.write_bytes(os.urandom(args.size_mb * 1024 * 1024))

            startup = timed(lambda: run([COI, "--version"]), args.runs)
            python = timed(lambda: run([sys.executable, "-c", "pass"]), args.runs)
            print(
                f"{'coi --version (start-up)':<34} coi {startup * 1000:8.1f} ms   (bare python: {python * 1000:.1f} ms)"
            )

            report(
                "container exec NAME -- true",
                timed(lambda: run([COI, "container", "exec", name, "--", "true"], env), args.runs),
                timed(lambda: run([*incus, "exec", name, "--", "true"]), args.runs),
            )
            report(
                f"file push ({args.size_mb} MB)",
                timed(
                    lambda: run([COI, "file", "push", str(blob), f"{name}:/root/blob.bin"], env), args.runs
                ),
                timed(lambda: run([*incus, "file", "push", str(blob), f"{name}/root/blob.bin"]), args.runs),
            )
            report(
                "image list --format json",
                timed(lambda: run([COI, "image", "list", "--format", "json"], env), args.runs),
                timed(lambda: run([*incus, "image", "list", "--format", "json"]), args.runs),
            )
    finally:
        subprocess.run([*incus, "delete", "--force", name], capture_output=True, check=False)
        # Never `project delete --force` (it wipes the shared default profile on Incus 6.0).
        subprocess.run(["incus", "project", "delete", project], capture_output=True, check=False)


if __name__ == "__main__":
    main()
