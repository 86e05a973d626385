"""`coi fork -n 4` of a running session, against the reference way and the floor.

The original is a `coi shell --background` session (the Debian test image with tmux and the fake
Claude CLI) that has a conversation. Each sample makes four copies of it and ends when they run:

- coi: `coi fork ORIGINAL -n 4`, a fresh process, until it returns: four new sessions in four
  free slots, each with its keys, egress, store entry and the tool going on with a copy of the
  conversation in its tmux session (goal: at most 1.5 s on a copy-on-write btrfs pool);
- reference: the `incus` CLI, one call after the other: `incus copy ORIGINAL NAME` then `incus
  start NAME`, four times (copies only: no keys, egress or tool);
- floor: in process, four `POST /1.0/instances` copy-and-start requests at once over one
  connection (a fresh event loop and connection per sample): what incusd itself takes.

Every side starts from the same machine state: after each sample, untimed, the copies are
deleted and the script waits until incusd lists none of them. The sides are interleaved sample by
sample after an untimed warm-up round (benchmarks/paired.py). Prints the medians and minimums,
the ratios to the reference and to the floor.

    .venv/bin/python benchmarks/fork.py [--rounds 5] [--forks 4] [--image coi-test-debian]
                                        [--project P] [--baseline OTHER/.venv/bin/coi]

With --baseline, a second coi (another checkout's: the tree before a change) forks in the same
interleaved rounds, and its ratio to this coi is printed: before and after from one machine state.

Without --project the script works in a throwaway project (sharing the default project's images
and profiles) that it removes at the end; its containers are named with a prefix of this run's
own (`bench<hex>-`), and HOME is a temporary directory, so nothing of yours is touched.
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
from pathlib import Path

import anyio
from fixtures import runtime_dir
from paired import paired

from coi_async.incus import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost

COI = str(Path(sys.executable).with_name("coi"))
GOAL_S = 1.5
HOME_FILES = {
    ".claude/.credentials.json": '{"claudeAiOauth": {"accessToken": "bench"}}',
    ".claude/settings.json": '{"env": {"A": "1"}}',
    ".claude.json": '{"userID": "bench"}',
}


def incus(project: str, *args: str, check: bool = True) -> str:
    done = subprocess.run(["incus", "--project", project, *args], capture_output=True, check=False)
    if check and done.returncode != 0:
        line = shlex.join(["incus", "--project", project, *args])
        raise SystemExit(f"{line} failed ({done.returncode}): {done.stderr.decode().strip()}")
    return done.stdout.decode().strip()


def coi(env: dict[str, str], workspace: str, *args: str, binary: str = COI) -> str:
    done = subprocess.run([binary, *args], env=env, cwd=workspace, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"coi {shlex.join(args)} failed ({done.returncode}): {done.stderr.decode().strip()}")
    return done.stdout.decode()


def names(project: str, prefix: str) -> list[str]:
    return incus(project, "list", f"^{prefix}", "--format=csv", "--columns=n").split()


def remove_copies(project: str, prefix: str, keep: str) -> None:
    """Delete every container of the run but the original, and wait until incusd lists none."""
    for _ in range(120):
        left = [n for n in names(project, prefix) if n != keep]
        if not left:
            return
        for name in left:
            incus(project, "delete", name, "--force", check=False)
        time.sleep(0.25)
    raise SystemExit("copies still there after 30 s")


def reference(project: str, original: str, prefix: str, count: int) -> None:
    for _ in range(count):
        name = f"{prefix}ref-{secrets.token_hex(3)}"
        incus(project, "copy", original, name, "--instance-only")
        incus(project, "start", name)


def floor(project: str, original: str, prefix: str, count: int) -> None:
    async def copies() -> None:
        async with IncusClient.connect(project=project) as client, anyio.create_task_group() as tg:
            for _ in range(count):
                request = InstancesPost(
                    name=f"{prefix}api-{secrets.token_hex(3)}",
                    source=InstanceSource(type="copy", source=original, instance_only=True),
                    start=True,
                )
                tg.start_soon(client.create_instance, request)

    anyio.run(copies)


def wait_for_conversation(env: dict[str, str], workspace: str, name: str) -> None:
    for _ in range(100):
        if "You:" in coi(env, workspace, "tmux", "capture", name):
            break
        time.sleep(0.1)
    coi(env, workspace, "tmux", "send", name, "before the fork")
    for _ in range(100):
        if "Claude: before the fork" in coi(env, workspace, "tmux", "capture", name):
            return
        time.sleep(0.1)
    raise SystemExit(f"the fake tool in {name} did not answer")


def bench(opts: argparse.Namespace, prefix: str) -> dict[str, list[float]]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-home-") as home,
        tempfile.TemporaryDirectory(prefix="bench-ws-") as workspace,
        runtime_dir("coi", COI) as run_coi,
        runtime_dir("baseline", opts.baseline or COI) as run_base,
    ):
        for rel, text in HOME_FILES.items():
            (Path(home) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(home) / rel).write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COI_", "CLAUDE_ON_INCUS_"))} | {
            "HOME": home,
            "COI_CONTAINER_PREFIX": prefix,
            "COI_INCUS_PROJECT": opts.project,
            "CLAUDE_ON_INCUS_IMAGE": opts.image,
            "XDG_RUNTIME_DIR": run_coi,
        }
        coi(env, workspace, "shell", "--background")
        [original] = names(opts.project, prefix)
        wait_for_conversation(env, workspace, original)
        n = str(opts.forks)
        sides = {
            "coi": lambda: coi(env, workspace, "fork", original, "-n", n),
            "reference": lambda: reference(opts.project, original, prefix, opts.forks),
            "floor": lambda: floor(opts.project, original, prefix, opts.forks),
        }
        if opts.baseline:
            # With an egress daemon of its own code (the daemon is per runtime directory).
            base_env = env | {"XDG_RUNTIME_DIR": run_base}
            sides["baseline"] = lambda: coi(
                base_env, workspace, "fork", original, "-n", n, binary=opts.baseline
            )
        try:
            return paired(sides, opts.rounds, between=lambda: remove_copies(opts.project, prefix, original))
        finally:
            remove_copies(opts.project, prefix, "")


def report(opts: argparse.Namespace, samples: dict[str, list[float]]) -> None:
    med = {side: statistics.median(s) for side, s in samples.items()}
    low = {side: min(s) for side, s in samples.items()}
    n = opts.forks
    print(f"image {opts.image}, {n} forks per sample, {opts.rounds} rounds, alternating; median (min):")
    print(f"  coi fork -n {n:<20} {med['coi']:7.3f} s ({low['coi']:.3f})   goal <= {GOAL_S:g} s")
    print(f"  incus copy + start x{n:<11} {med['reference']:7.3f} s ({low['reference']:.3f})")
    print(f"  floor: {n} API copies at once   {med['floor']:7.3f} s ({low['floor']:.3f})")
    print(f"  ratio coi / reference        {med['coi'] / med['reference']:7.2f}")
    print(f"  ratio coi / floor            {med['coi'] / med['floor']:7.2f}")
    if "baseline" in med:
        print(f"  baseline coi fork            {med['baseline']:7.3f} s ({low['baseline']:.3f})")
        print(f"  ratio coi / baseline         {med['coi'] / med['baseline']:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", "--runs", type=int, default=5)
    parser.add_argument("--forks", type=int, default=4)
    parser.add_argument("--image", default="coi-test-debian", help="needs tmux and the fake Claude CLI")
    parser.add_argument("--project", default="", help="an existing project (default: a throwaway one)")
    parser.add_argument(
        "--baseline", default="", help="another coi executable (e.g. an older checkout's), timed alongside"
    )
    opts = parser.parse_args()
    prefix = f"bench{secrets.token_hex(2)}-"
    throwaway = not opts.project
    if throwaway:
        opts.project = f"bench-{secrets.token_hex(3)}"
        shared = ["-c", "features.images=false", "-c", "features.profiles=false"]
        subprocess.run(["incus", "project", "create", opts.project, *shared], capture_output=True, check=True)
    try:
        report(opts, bench(opts, prefix))
    finally:
        if throwaway:
            for name in names(opts.project, ""):
                incus(opts.project, "delete", name, "--force", check=False)
            # Never `project delete --force` (it wipes the shared default profile on Incus 6.0).
            subprocess.run(["incus", "project", "delete", opts.project], capture_output=True, check=False)


if __name__ == "__main__":
    main()
