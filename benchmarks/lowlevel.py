"""Low-level one-shot commands: `coi` against the `incus` command doing the same, in the same run.

Both sides are fresh processes, as a script would run them: each `coi` call is a new Python
process, so its start-up counts; its own line shows the start-up of `coi --version` against a bare
`python -c pass`. The two sides are timed alternately, sample by sample, after one untimed round
(benchmarks/paired.py); prints the median of each and the ratio. `list --format json` is timed
with `--sessions` running containers (32) named like sessions, against `incus list --format json`
of the same project.

    .venv/bin/python benchmarks/lowlevel.py [--runs 10] [--size-mb 50] [--image coi-test-busybox]
                                            [--sessions 32]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from paired import median_ms, paired

COI = str(Path(sys.executable).with_name("coi"))


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode().strip()}")


def compare(label: str, coi: Callable[[], None], incus: Callable[[], None], runs: int) -> None:
    """Both sides alternately, one untimed round first; the medians and their ratio."""
    times = paired({"coi": coi, "incus": incus}, runs)
    c, i = median_ms(times["coi"]), median_ms(times["incus"])
    print(f"{label:<34} coi {c:8.1f} ms   incus {i:8.1f} ms   ratio {c / i:5.2f}  ({i / c:4.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--image", default="coi-test-busybox")
    parser.add_argument("--sessions", type=int, default=32)
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

            start_up = paired(
                {
                    "coi": lambda: run([COI, "--version"]),
                    "python": lambda: run([sys.executable, "-c", "pass"]),
                },
                args.runs,
            )
            print(
                f"{'coi --version (start-up)':<34} coi {median_ms(start_up['coi']):8.1f} ms   "
                f"(bare python -c pass: {median_ms(start_up['python']):.1f} ms)"
            )
            compare(
                "--version",
                lambda: run([COI, "--version"]),
                lambda: run(["incus", "--version"]),
                args.runs,
            )
            compare(
                "container exec NAME -- true",
                lambda: run([COI, "container", "exec", name, "--", "true"], env),
                lambda: run([*incus, "exec", name, "--", "true"]),
                args.runs,
            )
            compare(
                f"file push ({args.size_mb} MB)",
                lambda: run([COI, "file", "push", str(blob), f"{name}:/root/blob.bin"], env),
                lambda: run([*incus, "file", "push", str(blob), f"{name}/root/blob.bin"]),
                args.runs,
            )
            compare(
                "image list --format json",
                lambda: run([COI, "image", "list", "--format", "json"], env),
                lambda: run([*incus, "image", "list", "--format", "json"]),
                args.runs,
            )
            sessions = [f"{name}-{i}" for i in range(1, args.sessions + 1)]
            launching = [
                subprocess.Popen([*incus, "launch", args.image, s], stdout=subprocess.DEVNULL)
                for s in sessions
            ]
            if any(p.wait() for p in launching):
                raise SystemExit("could not launch the sessions")
            listing = {**env, "COI_CONTAINER_PREFIX": f"{name}-", "HOME": tmp, "XDG_RUNTIME_DIR": tmp}
            compare(
                f"list --format json ({args.sessions} sessions)",
                lambda: run([COI, "list", "--format", "json"], listing),
                lambda: run([*incus, "list", "--format", "json"]),
                args.runs,
            )
    finally:
        subprocess.run([*incus, "delete", "--force", name], capture_output=True, check=False)
        for i in range(1, args.sessions + 1):
            subprocess.run([*incus, "delete", "--force", f"{name}-{i}"], capture_output=True, check=False)
        # Never `project delete --force` (it wipes the shared default profile on Incus 6.0).
        subprocess.run(["incus", "project", "delete", project], capture_output=True, check=False)


if __name__ == "__main__":
    main()
