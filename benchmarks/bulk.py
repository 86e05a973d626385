"""Bulk lifecycle: `coi shutdown/kill --all` against the reference's way and against the floor.

For every N it creates N containers (the systemd test image, with a small ~/.claude each) in a
throwaway project and measures, on freshly made containers of the same kind each time, after
one untimed warm-up of both sides, the sides one after the other within each repetition:

  (a) the reference's way: the `incus` commands the Go coi runs, one container after another
      (`list`, `stop` raced with its timer, [`stop --force`], `delete --force`; for kill
      `list ^C$ csv`, `list C json`, `stop --force`, `delete --force`). The reference runs each
      through `sg incus-admin -c "incus ..."`; here `incus` is called directly (cheaper for it).
      The reference never saves session data; coi does.
  (b) the floor: the same work coi does (tar of ~/.claude over exec, stop, delete) as direct
      client calls, every container at once, with no coi logic at all;
  (c) `coi shutdown --all --force` / `coi kill --all --force` as a subprocess (Python start-up,
      config, listing, session saving and metadata included), its output piped (non-TTY).

Also: archiving N sessions at once against one (coi's saver, same limiter as the commands);
(d) N containers whose init ignores the graceful signal, `coi shutdown --timeout 5` against the
reference, which waits out each timeout in turn (measured up to --d-reference-n, projected
above); the peak RSS of one coi process shutting down --memory-n containers; and the server-side
bulk state change (PUT /1.0/instances) against per-instance stops fanned out.

    .venv/bin/python benchmarks/bulk.py [--n 8,16,32] [--reps 1] [--image coi-test-debian]

With --baseline OTHER/.venv/bin/python, that checkout's coi is timed as (c') right after (c) in
every repetition, on freshly made containers of the same kind: before and after a change from
one machine state.
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
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.to_thread
from fixtures import clear, throwaway_project

from coi_async.config import resolve_config
from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost, StatePut
from coi_async.naming import KEY_SESSION
from coi_async.orchestration.bulk import lifecycle as lc
from coi_async.orchestration.runner import ItemContext, run_bulk
from coi_async.orchestration.sessions.store import SessionStore
from coi_async.tools import get_tool

PREFIX = "h4-"
REPO = Path(__file__).resolve().parent.parent
CREATE_PARALLEL = 8
REFERENCE_TIMEOUT_S = 60  # the reference's --timeout default


# --- set-up ----------------------------------------------------------------------------------------


def names_for(n: int) -> list[str]:
    stem = secrets.token_hex(4)
    return [f"{PREFIX}{stem}-{i}" for i in range(1, n + 1)]


async def make(
    incus: IncusClient, names: list[str], image: str, *, ignore_stop: bool = False, systemd: bool = False
) -> None:
    """Create and start the containers with a small session each; wait until they are up."""
    limiter = anyio.CapacityLimiter(CREATE_PARALLEL)

    async def one(name: str) -> None:
        async with limiter:
            session = str(uuid.uuid4())
            await incus.create_instance(
                InstancesPost(
                    name=name,
                    source=InstanceSource(type="image", alias=image),
                    # Through the environment, not a pushed file: the files API flakes on a
                    # loaded incusd ("forkfile.sock") for stopped containers.
                    config={KEY_SESSION: session}
                    | ({"environment.COI_IGNORE_STOP": "1"} if ignore_stop else {}),
                )
            )
            await incus.start_instance(name)
            # One exec rather than files-API calls: those flake on a loaded incusd ("forkfile.sock").
            base = "/home/code/.claude"
            script = (
                f'mkdir -p {base}/projects/-workspace && echo \'{{"theme": "dark"}}\' > {base}/settings.json'
                f" && head -c 65536 /dev/urandom > {base}/projects/-workspace/{session}.jsonl"
                f" && chown -R 1000:1000 {base}"
            )
            result = await incus.exec(name, ["sh", "-c", script])
            if not result.ok:
                raise CoiError(f"setting up {name}: {result.stderr.decode()}")
        if systemd:
            # A guest that has not finished booting may miss the shutdown signal.
            with anyio.move_on_after(60):
                await incus.exec(name, ["systemctl", "is-system-running", "--wait"])

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)


# --- (a) the reference's way -------------------------------------------------------------------------


def incus_cli(project: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["incus", "--project", project, *args], capture_output=True, check=check)


def reference_shutdown(project: str, names: list[str], timeout_s: int) -> None:
    incus_cli(project, "list", f"^{PREFIX}", "--format=json")
    for name in names:
        incus_cli(project, "list", name, "--format=json")
        stop = subprocess.Popen(
            ["incus", "--project", project, "stop", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            stop.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            incus_cli(project, "list", name, "--format=json")
            incus_cli(project, "stop", name, "--force")
        incus_cli(project, "delete", name, "--force")
        if stop.poll() is None:
            stop.kill()
            stop.wait()


def reference_kill(project: str, names: list[str]) -> None:
    incus_cli(project, "list", f"^{PREFIX}", "--format=json")
    for name in names:
        incus_cli(project, "list", f"^{name}$", "--format=csv", "--columns=n")
        incus_cli(project, "list", name, "--format=json")
        incus_cli(project, "stop", name, "--force")
        incus_cli(project, "delete", name, "--force")


# --- (b) the floor -------------------------------------------------------------------------------------


async def _drain(_: bytes) -> None:
    pass


async def floor(incus: IncusClient, names: list[str], *, force: bool, grace_s: int = 60) -> None:
    async def one(name: str) -> None:
        await incus.exec_stream(
            name, ["tar", "-c", "-f", "-", "-C", "/home/code/.claude", "."], on_stdout=_drain
        )
        await incus.stop_instance(name, force=force, grace_s=None if force else grace_s)
        await incus.delete_instance(name)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)


# --- (c) coi --------------------------------------------------------------------------------------------


def coi(project: str, home: str, *args: str, python: str = sys.executable) -> tuple[float, int, int]:
    """Wall time, exit code and peak RSS (KiB) of one coi run (`python`'s coi_async)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COI_")}
    env.update(COI_CONTAINER_PREFIX=PREFIX, COI_INCUS_PROJECT=project, HOME=home, NO_COLOR="1")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [python, "-m", "coi_async", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(f"    ! coi {' '.join(args)} exited {proc.returncode}: {err.decode().strip()[-300:]}")
    return elapsed, proc.returncode, usage.ru_maxrss


# --- archiving ---------------------------------------------------------------------------------------------


async def archive(incus: IncusClient, names: list[str], home: str, parallel: int) -> float:
    tool = get_tool("claude")
    saver = lc.SessionSaver(
        SessionStore(Path(home) / ".coi" / "sessions-claude", config_dir=tool.config_dir),
        tool,
        resolve_config([], {"COI_CONTAINER_PREFIX": PREFIX}, home=home),
    )
    instances = {i.name: i for i in await incus.list_instances() if i.name in names}

    async def save(ctx: ItemContext) -> None:
        await saver.save(incus, instances[ctx.name])

    start = time.perf_counter()
    report = await run_bulk(names, save, limit=parallel, per_item_s=120)
    if report.failed:
        print(f"    ! archive failures: {[(r.item, r.error) for r in report.failed]}")
    return time.perf_counter() - start


# --- reporting -----------------------------------------------------------------------------------------------


class Samples:
    def __init__(self) -> None:
        self.data: dict[tuple[str, int], list[float]] = {}

    def add(self, key: str, n: int, seconds: float) -> None:
        self.data.setdefault((key, n), []).append(seconds)

    def med(self, key: str, n: int) -> float | None:
        values = self.data.get((key, n))
        return statistics.median(values) if values else None

    def line(self, label: str, key: str, n: int) -> str:
        values = self.data.get((key, n))
        if not values:
            return f"  {label:<34} -"
        return (
            f"  {label:<34} median {statistics.median(values):7.2f} s   "
            f"min {min(values):7.2f}   max {max(values):7.2f}   ({len(values)} run(s))"
        )


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def timed_sync(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    await anyio.to_thread.run_sync(fn)
    return time.perf_counter() - start


async def left(incus: IncusClient) -> int:
    return len(await incus.list_instances())


# --- the run -------------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="h4-bench-") as tmp:  # the homes of the coi processes
        await measure(args, tmp)


async def measure(args: argparse.Namespace, tmp: str) -> None:
    sizes = [int(x) for x in args.n.split(",")]
    project = f"h4b-{secrets.token_hex(3)}"
    samples = Samples()
    began = time.perf_counter()
    async with IncusClient.connect() as root:
        image = args.image
        if await root.find_image(image) is None:
            print(f"note: image {image} not found; falling back to coi-test-busybox")
            image = "coi-test-busybox"
        systemd = image != "coi-test-busybox"
        info = await root.server_info()
        print(
            f"incus {info.environment.server_version}, storage {info.environment.storage}, "
            f"image {image}, project {project}, reps {args.reps}, coi --parallel default "
            f"(config defaults.parallel), {os.cpu_count()} CPUs"
        )
        async with throwaway_project(root, project, grace_s=300) as incus:
            # Warm-up, not measured: Python's bytecode and the page cache for coi, incusd's caches
            # for both sides, so that the first timed side of the first N pays no cold start.
            print("warm-up: ", end="", flush=True)
            names = names_for(2)
            await make(incus, names, image, systemd=systemd)
            await anyio.to_thread.run_sync(lambda: reference_kill(project, names))
            names = names_for(2)
            await make(incus, names, image, systemd=systemd)
            coi(project, tempfile.mkdtemp(dir=tmp), "shutdown", "--all", "--force")
            await clear(incus)
            print("done", flush=True)

            async def baseline(command: str, n: int) -> None:
                """(c'): the baseline checkout's coi, on fresh containers of the same kind."""
                if not args.baseline:
                    return
                await make(incus, names_for(n), image, systemd=systemd)
                seconds, _, _ = coi(
                    project, tempfile.mkdtemp(dir=tmp), command, "--all", "--force", python=args.baseline
                )
                samples.add(f"base-{command}", n, seconds)
                print("c'", end=" ", flush=True)

            for n in sizes:
                for rep in range(args.reps):
                    print(f"N={n} run {rep + 1}: ", end="", flush=True)
                    # shutdown
                    names = names_for(n)
                    await make(incus, names, image, systemd=systemd)
                    samples.add(
                        "a-shutdown",
                        n,
                        await timed_sync(
                            lambda names=names: reference_shutdown(project, names, REFERENCE_TIMEOUT_S)
                        ),
                    )
                    print("a", end=" ", flush=True)
                    names = names_for(n)
                    await make(incus, names, image, systemd=systemd)
                    samples.add(
                        "b-shutdown", n, await timed(lambda names=names: floor(incus, names, force=False))
                    )
                    print("b", end=" ", flush=True)
                    names = names_for(n)
                    await make(incus, names, image, systemd=systemd)
                    # archiving on the same containers, before coi ends them
                    home = tempfile.mkdtemp(dir=tmp)
                    samples.add("archive-1", n, await archive(incus, names[:1], home, 8))
                    samples.add("archive-n", n, await archive(incus, names, home, 8))
                    home = tempfile.mkdtemp(dir=tmp)
                    seconds, _, _ = coi(project, home, "shutdown", "--all", "--force")
                    samples.add("c-shutdown", n, seconds)
                    print("c", end=" ", flush=True)
                    await baseline("shutdown", n)
                    # kill
                    names = names_for(n)
                    await make(incus, names, image, systemd=systemd)
                    samples.add(
                        "a-kill", n, await timed_sync(lambda names=names: reference_kill(project, names))
                    )
                    print("a", end=" ", flush=True)
                    names = names_for(n)
                    await make(incus, names, image, systemd=systemd)
                    samples.add("b-kill", n, await timed(lambda names=names: floor(incus, names, force=True)))
                    print("b", end=" ", flush=True)
                    names = names_for(n)
                    await make(incus, names, image, systemd=systemd)
                    seconds, _, _ = coi(project, tempfile.mkdtemp(dir=tmp), "kill", "--all", "--force")
                    samples.add("c-kill", n, seconds)
                    print("c", end=" ", flush=True)
                    await baseline("kill", n)
                    # server-side bulk state change against per-instance stops (force)
                    names = names_for(n)
                    await make(incus, names, image, systemd=systemd)
                    samples.add(
                        "bulk-put",
                        n,
                        await timed(lambda: incus.change_all_states(StatePut(action="stop", force=True))),
                    )
                    await clear(incus)
                    names = names_for(n)
                    await make(incus, names, image, systemd=systemd)

                    async def per_instance(names: list[str] = names) -> None:
                        async with anyio.create_task_group() as tg:
                            for name in names:
                                tg.start_soon(lambda x=name: incus.stop_instance(x, force=True))

                    samples.add("per-instance-put", n, await timed(per_instance))
                    await clear(incus)
                    print("e", end=" ", flush=True)
                    # (d) graceful signal ignored
                    names = names_for(n)
                    await make(incus, names, "coi-test-busybox", ignore_stop=True)
                    seconds, _, _ = coi(
                        project,
                        tempfile.mkdtemp(dir=tmp),
                        "shutdown",
                        "--all",
                        "--force",
                        "--timeout",
                        str(args.timeout),
                    )
                    samples.add("d-coi", n, seconds)
                    if n <= args.d_reference_n:
                        names = names_for(n)
                        await make(incus, names, "coi-test-busybox", ignore_stop=True)
                        samples.add(
                            "d-ref",
                            n,
                            await timed_sync(
                                lambda names=names: reference_shutdown(project, names, args.timeout)
                            ),
                        )
                    print("d", flush=True)
                    if await left(incus):
                        print(f"    ! {await left(incus)} container(s) left over; clearing")
                        await clear(incus)

            rss_kib = None
            if args.memory_n:
                names = names_for(args.memory_n)
                await make(incus, names, "coi-test-busybox")
                seconds, _, rss_kib = coi(project, tempfile.mkdtemp(dir=tmp), "shutdown", "--all", "--force")
                samples.add("memory", args.memory_n, seconds)
                await clear(incus)

    print()
    for n in sizes:
        print(f"N = {n}")
        for label, key in (
            ("(a) shutdown, reference way", "a-shutdown"),
            ("(b) shutdown, floor", "b-shutdown"),
            ("(c) coi shutdown --all --force", "c-shutdown"),
            ("(c') baseline coi shutdown", "base-shutdown"),
            ("(a) kill, reference way", "a-kill"),
            ("(b) kill, floor", "b-kill"),
            ("(c) coi kill --all --force", "c-kill"),
            ("(c') baseline coi kill", "base-kill"),
            ("archive 1 session", "archive-1"),
            (f"archive {n} sessions", "archive-n"),
            ("force stop: one bulk PUT", "bulk-put"),
            ("force stop: per-instance PUTs", "per-instance-put"),
            (f"(d) coi, --timeout {args.timeout}", "d-coi"),
            (f"(d) reference, --timeout {args.timeout}", "d-ref"),
        ):
            print(samples.line(label, key, n))
        m = samples.med
        print(
            f"  ratios: shutdown coi/floor {ratio(m('c-shutdown', n), m('b-shutdown', n))}, "
            f"reference/coi {ratio(m('a-shutdown', n), m('c-shutdown', n))}; "
            f"kill coi/floor {ratio(m('c-kill', n), m('b-kill', n))}, "
            f"reference/coi {ratio(m('a-kill', n), m('c-kill', n))}"
        )
        if args.baseline:
            print(
                f"          baseline: shutdown coi/baseline {ratio(m('c-shutdown', n), m('base-shutdown', n))}, "
                f"kill coi/baseline {ratio(m('c-kill', n), m('base-kill', n))}"
            )
        print(
            f"          archive N/1 {ratio(m('archive-n', n), m('archive-1', n))}; "
            f"bulk PUT/per-instance {ratio(m('bulk-put', n), m('per-instance-put', n))}; "
            f"(d) coi - timeout = {(m('d-coi', n) or 0) - args.timeout:+.2f} s"
            + (
                f", reference/coi {ratio(m('d-ref', n), m('d-coi', n))}"
                if m("d-ref", n)
                else f", reference projected ≥ {n * args.timeout} s (N x timeout)"
            )
        )
    if args.memory_n:
        print(
            f"memory: coi shutdown --all --force of {args.memory_n} containers: peak RSS "
            f"{(rss_kib or 0) / 1024:.1f} MB in {samples.med('memory', args.memory_n) or 0:.2f} s"
        )
    print(f"total benchmark time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="8,16,32", help="container counts, comma-separated")
    parser.add_argument("--reps", type=int, default=1, help="repetitions per N (fresh containers each)")
    parser.add_argument("--image", default="coi-test-debian")
    parser.add_argument(
        "--timeout", type=int, default=5, help="(d): coi's --timeout and the reference's timer"
    )
    parser.add_argument(
        "--d-reference-n", type=int, default=8, help="(d): measure the reference up to this N"
    )
    parser.add_argument("--memory-n", type=int, default=100, help="containers for the RSS check (0: skip)")
    parser.add_argument(
        "--baseline",
        default="",
        help="another checkout's python (e.g. the tree before a change): its coi is timed as (c') in every rep",
    )
    anyio.run(main, parser.parse_args())
