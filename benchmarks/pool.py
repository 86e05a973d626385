"""The warm pool: `coi shell --background` (until its tmux session is ready) taking a made-ahead
member against creating the container, on a storage pool of the driver given; and what creating
a container costs there.

    .venv/bin/python benchmarks/pool.py [--driver dir|btrfs] [--runs 5] [--image coi-test-debian]
                                        [--size 2] [--auto]

The script makes its own storage pool (`coipool-<hex>`; btrfs on a loop file) and a project whose
own default profile puts root disks there (no NIC), and removes both at the end. The sides run
alternately, sample by sample, after an untimed warm-up round (benchmarks/paired.py), from the
same state: after every sample, untimed, the session's container is deleted and the pool made
whole again (`coi pool fill`, which first waits for the background refill the take started).

- `pool`: `[pool] size = N` (taken: rename, config, start);
- `no pool`: `[pool] size = 0` (created from the image, as without this feature);
- `auto` (with --auto): `[pool] size = "auto"`, the default: the pool on `dir`, off elsewhere,
  where it costs the lookup of the storage driver.

It prints the median creation of a stopped container from the image on that pool, the medians
of each side, and the ratios to `no pool`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from paired import paired
from session_start import write_shell_home

COI = str(Path(sys.executable).with_name("coi"))


def incus(*args: str, check: bool = True) -> str:
    done = subprocess.run(["incus", *args], capture_output=True, check=False)
    if check and done.returncode != 0:
        line = " ".join(shlex.quote(a) for a in args)
        raise SystemExit(f"incus {line} failed ({done.returncode}): {done.stderr.decode().strip()}")
    return done.stdout.decode().strip()


def remove(project: str, pattern: str) -> None:
    """Delete (untimed) every instance whose name matches `pattern`, and wait until none is listed."""
    for _ in range(600):
        names = incus("--project", project, "list", pattern, "--format=csv", "--columns=n").split()
        if not names:
            return
        for name in names:
            incus("--project", project, "delete", name, "--force", check=False)
        time.sleep(0.25)
    raise SystemExit(f"containers {pattern} still there")


def coi(env: dict[str, str], cwd: str, *args: str) -> None:
    done = subprocess.run([COI, *args], env=env, cwd=cwd, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"coi {' '.join(args)} failed ({done.returncode}): {done.stderr.decode().strip()}")


def create_cost(project: str, image: str, storage: str, runs: int) -> float:
    """Median seconds of `incus init` (a stopped container from the image) on the pool."""
    name = f"benchcreate-{secrets.token_hex(3)}"
    times = paired(
        {"create": lambda: incus("--project", project, "init", image, name, "-s", storage, "-q")},
        runs,
        between=lambda: (remove(project, f"^{name}$"), os.sync()),
    )
    return statistics.median(times["create"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--driver", default="dir", help="storage driver of the pool made (dir, btrfs)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="coi-test-debian", help="needs tmux and the code user")
    parser.add_argument("--size", type=int, default=2, help="[pool] size of the pool side")
    parser.add_argument("--auto", action="store_true", help='also time [pool] size = "auto"')
    opts = parser.parse_args()

    tag = secrets.token_hex(3)
    storage, project, prefix = f"coipool-{tag}", f"bench-pool-{tag}", f"bp{tag[:4]}-"
    config = ["size=8GiB"] if opts.driver != "dir" else []
    incus("storage", "create", storage, opts.driver, *config)
    try:
        incus("project", "create", project, "-c", "features.images=false", "-c", "features.profiles=true")
        incus(
            "--project",
            project,
            "profile",
            "device",
            "add",
            "default",
            "root",
            "disk",
            "path=/",
            f"pool={storage}",
        )
        with (
            tempfile.TemporaryDirectory(prefix="bench-home-") as home,
            tempfile.TemporaryDirectory(prefix="bench-ws-") as workspace,
        ):
            write_shell_home(home)
            base = {k: v for k, v in os.environ.items() if not k.startswith(("COI_", "CLAUDE_ON_INCUS_"))}
            base |= {"HOME": home, "COI_CONTAINER_PREFIX": prefix, "COI_INCUS_PROJECT": project}
            envs: dict[str, dict[str, str]] = {}
            settings = {"pool": str(opts.size), "no pool": "0"}
            if opts.auto:
                settings["auto"] = '"auto"'
            for side, size in settings.items():
                path = Path(home) / f"{side.replace(' ', '-')}.toml"
                path.write_text(f'[defaults]\nimage = "{opts.image}"\n[pool]\nsize = {size}\n')
                envs[side] = base | {"COI_CONFIG": str(path)}

            def between() -> None:
                remove(project, f"^{prefix}[0-9a-f]{{8}}-[0-9]+$")
                # Waits for the refill a take started (its lock), then tops the pool up.
                coi(envs["pool"], workspace, "pool", "fill", "--size", str(opts.size))
                # What the deletes and the fill wrote is flushed first, not charged to the next sample.
                os.sync()

            cost = create_cost(project, opts.image, storage, opts.runs)
            between()
            sides: dict[str, Callable[[], object]] = {
                side: (lambda env=env: coi(env, workspace, "shell", "--background"))
                for side, env in envs.items()
            }
            times = paired(sides, opts.runs, between=between)
    finally:
        remove(project, "^")
        incus("project", "delete", project, check=False)
        incus("storage", "delete", storage, check=False)

    medians = {side: statistics.median(samples) for side, samples in times.items()}
    print(f"storage driver {opts.driver}, image {opts.image}, {opts.runs} runs each, alternating, medians:")
    print(f"  create a stopped container (incus init)   {cost:7.3f} s")
    for side, median in medians.items():
        label = f"coi shell --background, {side}"
        shown = " ".join(f"{t:.2f}" for t in times[side])
        print(f"  {label:<41} {median:7.3f} s   (samples: {shown})")
    for side, median in medians.items():
        if side != "no pool":
            print(f"  ratio {side} / no pool{'':<{27 - len(side)}} {median / medians['no pool']:7.2f}")


if __name__ == "__main__":
    main()
