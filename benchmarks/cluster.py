"""A cluster remote: N sessions created and `coi shutdown --all` on 3 members against 1 member.

Brings up a real 3-member Incus cluster on this machine (tests/cluster_harness.py: root, network
namespaces, no default route; torn down whatever happens), adds it to a coi of its own HOME as
the remote `clu`, and in one run, on the same cluster and from the same machine state (no
instance left before a side starts), times:

- create+start of N session containers (busybox, named and stamped as coi's sessions) through
  the API over HTTPS, --width at a time: spread over the 3 members (`?target=` round-robin)
  against all N on m1; each then gets a small ~/.claude (untimed);
- `coi --remote clu shutdown --all --force` of those N as a subprocess (Python start-up, the
  listing, saving every session's data, graceful stop, delete), on each side;
- the floor of that shutdown on each side: the same work (tar of ~/.claude over exec, graceful
  stop, delete) as direct client calls, all N at once, no coi logic (benchmarks/bulk.py's);
- the per-request latency of coi's HTTPS client (TLS, a kept-open connection, m1's address)
  against the same client on a member's unix socket: `GET /1.0`, `GET /1.0/instances/NAME` of
  an instance on m1, and of one on m2 (over HTTPS m1 forwards it; the unix side is m2's socket).

After one untimed warm-up round of both sides (--warmup-n sessions each, which also puts the
image on every member), each round times the cluster-spread side and the one-member side
alternately (the order reversed every other round); medians, and the ratio spread/one-member
per slot (the goal: the cluster is no slower per slot than one member).

    .venv/bin/python benchmarks/cluster.py [--n 96] [--rounds 3] [--width 32] [--no-floor]
    .venv/bin/python benchmarks/cluster.py --n 12 --rounds 1      # a smoke check

All three members share this machine's CPUs, so "spread" here measures what the cluster's
coordination costs (forwarding, the shared database), not the capacity three machines would add.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.to_thread
from fixtures import clear
from paired import paired_async

from coi_async.errors import CoiError
from coi_async.incus import HttpsEndpoint, IncusClient, UnixEndpoint
from coi_async.incus.models import InstanceSource, InstancesPost
from coi_async.naming import KEY_SESSION
from coi_async.orchestration.remotes import store as remote_store

REPO = Path(__file__).resolve().parent.parent
# Run as a script only benchmarks/ is on the path; the cluster harness lives in tests/.
sys.path.insert(0, str(REPO))

from tests.cluster_harness import Cluster, running_cluster
from tests.coi_cli import COI, coi_env, coi_sync
from tests.helpers import BUSYBOX_IMAGE

REMOTE = "clu"
PREFIX = "h13b-"
PROJECT = "default"  # the cluster is this run's own
PHASE_S = 900.0
SPREAD, ONE = "spread", "one"
COI_SIDE, FLOOR_SIDE = "coi", "floor"


# --- set-up ----------------------------------------------------------------------------------------


class Names:
    """Session container names, never reused within the run (`PREFIX<8 hex>-<slot>`)."""

    def __init__(self) -> None:
        self.batch = 0

    def take(self, n: int) -> list[str]:
        self.batch += 1
        stem = f"{self.batch:08x}"
        return [f"{PREFIX}{stem}-{i}" for i in range(1, n + 1)]


def targets(cluster: Cluster, side: str, n: int) -> list[str]:
    members = [m.name for m in cluster.members] if side == SPREAD else [cluster.first.name]
    return [members[i % len(members)] for i in range(n)]


async def create(incus: IncusClient, names: list[str], where: list[str], width: int) -> float:
    """Create and start the containers on their members, `width` at a time; the seconds it took."""
    limiter = anyio.CapacityLimiter(width)

    async def one(name: str, target: str) -> None:
        async with limiter:
            await incus.create_instance(
                InstancesPost(
                    name=name,
                    source=InstanceSource(type="image", alias=BUSYBOX_IMAGE),
                    config={KEY_SESSION: str(uuid.uuid4())},
                    start=True,
                ),
                target=target,
            )

    start = time.perf_counter()
    with anyio.fail_after(PHASE_S):
        async with anyio.create_task_group() as tg:
            for name, target in zip(names, where, strict=True):
                tg.start_soon(one, name, target)
    return time.perf_counter() - start


async def give_session_data(incus: IncusClient, names: list[str], width: int) -> None:
    """A small ~/.claude in each (one exec each, as benchmarks/bulk.py's), untimed."""
    limiter = anyio.CapacityLimiter(width)
    base = "/home/code/.claude"

    async def one(name: str) -> None:
        async with limiter:
            script = (
                f'mkdir -p {base}/projects/-workspace && echo \'{{"theme": "dark"}}\' > {base}/settings.json'
                f" && head -c 65536 /dev/urandom > {base}/projects/-workspace/{uuid.uuid4()}.jsonl"
                f" && chown -R 1000:1000 {base}"
            )
            for attempt in range(4):  # an exec m1 forwards is sometimes refused (500) under load
                try:
                    result = await incus.exec(name, ["sh", "-c", script])
                    break
                except CoiError:
                    if attempt == 3:
                        raise
            if not result.ok:
                raise CoiError(f"setting up {name}: {result.stderr.decode()}")

    with anyio.fail_after(PHASE_S):
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)


async def _drain(_: bytes) -> None:
    pass


async def floor(incus: IncusClient, names: list[str]) -> int:
    """benchmarks/bulk.py's floor (tar of ~/.claude over exec, graceful stop, delete; all at once),
    except that an exec incusd refuses is tried again (up to 3 times): on a cluster under this
    load, m1 sometimes answers 500 to the websocket of an exec it forwards. The retries made."""
    retries = 0

    async def one(name: str) -> None:
        nonlocal retries
        for attempt in range(4):
            try:
                await incus.exec_stream(
                    name, ["tar", "-c", "-f", "-", "-C", "/home/code/.claude", "."], on_stdout=_drain
                )
                break
            except CoiError:
                if attempt == 3:
                    raise
                retries += 1
        await incus.stop_instance(name, grace_s=60)
        await incus.delete_instance(name)

    with anyio.fail_after(PHASE_S):
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)
    return retries


async def placed(incus: IncusClient) -> str:
    counts = Counter(i.location for i in await incus.list_instances())
    return ", ".join(f"{member} {count}" for member, count in sorted(counts.items())) or "none"


# --- the coi under test ------------------------------------------------------------------------------


class Coi:
    """A coi with a HOME of its own that has the cluster as the remote `clu`."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.home = root / "home"
        self.cwd = root / "cwd"
        self.home.mkdir()
        self.cwd.mkdir()
        self.env = coi_env(home=self.home, prefix=PREFIX, drop=("COI_",))
        token = cluster.trust_token(f"coi-bench-{cluster.tag}")
        added = coi_sync("remote", "add", REMOTE, cluster.url, "--token", token, env=self.env, cwd=self.cwd)
        if added.code != 0:
            raise SystemExit(f"coi remote add: {added.stderr.strip()}")

    @property
    def sessions(self) -> Path:
        return self.home / ".coi" / "sessions-claude"

    def endpoint(self) -> HttpsEndpoint:
        directory = Path(self.env["XDG_CONFIG_HOME"]) / "coi"
        return remote_store.endpoint(REMOTE, remote_store.load(directory).remotes[REMOTE], directory)

    def shutdown_all(self, n: int) -> float:
        """`coi --remote clu shutdown --all --force` (output piped); its wall time."""
        shutil.rmtree(self.sessions, ignore_errors=True)
        start = time.perf_counter()
        done = subprocess.run(
            [COI, "--remote", REMOTE, "shutdown", "--all", "--force"],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            timeout=PHASE_S,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            print(f"\n    ! coi shutdown exited {done.returncode}: {done.stderr.decode().strip()[-300:]}")
            # Its per-container lines say why (piped output: the reference's lines).
            why = [line for line in done.stdout.decode().splitlines() if "✗" in line or "rror" in line]
            for line in why[:5]:
                print(f"      {line.strip()[:300]}")
        saved = len(list(self.sessions.iterdir())) if self.sessions.is_dir() else 0
        if saved != n:
            print(f"\n    ! coi saved {saved} of {n} sessions")
        return elapsed


# --- reporting -----------------------------------------------------------------------------------------


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def cell(values: list[float], n: int) -> str:
    m = med(values)
    if m is None:
        return f"{'-':>26}"
    return f"{m:7.2f} s {m / n * 1000:7.1f} ms/slot"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


# --- the run ---------------------------------------------------------------------------------------------


async def latency(cluster: Cluster, coi: Coi, requests: int) -> None:
    m1, m2 = cluster.members[0], cluster.members[1]
    on1, on2 = f"{PREFIX}lat-1", f"{PREFIX}lat-2"
    async with (
        IncusClient.connect(coi.endpoint(), project=PROJECT) as https,
        IncusClient.connect(UnixEndpoint(m1.directory / "unix.socket"), project=PROJECT) as unix1,
        IncusClient.connect(UnixEndpoint(m2.directory / "unix.socket"), project=PROJECT) as unix2,
    ):
        for name, member in ((on1, m1), (on2, m2)):
            post = InstancesPost(name=name, source=InstanceSource(type="image", alias=BUSYBOX_IMAGE))
            await https.create_instance(post, target=member.name)
        print(
            f"per-request latency: coi's client over HTTPS to m1 ({m1.url}, TLS, kept-open connection) "
            f"vs over a member's unix socket; {requests} requests each, interleaved after 20 untimed"
        )
        cases: list[tuple[str, Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]] = [
            ("GET /1.0", https.server_info, unix1.server_info),
            ("GET instance on m1", lambda: https.get_instance(on1), lambda: unix1.get_instance(on1)),
            (
                "GET instance on m2 (m2's socket)",
                lambda: https.get_instance(on2),
                lambda: unix2.get_instance(on2),
            ),
        ]
        for label, over_https, over_unix in cases:
            times = await paired_async({"https": over_https, "unix": over_unix}, requests, warmup=20)
            h, u = times["https"], times["unix"]
            mh, mu = statistics.median(h) * 1000, statistics.median(u) * 1000
            print(
                f"  {label:<34} https p50 {mh:6.2f} ms p99 {p99(h) * 1000:6.2f}   "
                f"unix p50 {mu:6.2f} ms p99 {p99(u) * 1000:6.2f}   https/unix p50 {mh / mu:5.2f}"
            )
        await clear(https)


async def bench(cluster: Cluster, args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="coi-bench-cluster-"))
    try:
        coi = Coi(cluster, tmp)
        await run(cluster, coi, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def run(cluster: Cluster, coi: Coi, args: argparse.Namespace) -> None:
    n, width = args.n, args.width
    names = Names()
    samples: dict[tuple[str, str], list[float]] = {}
    slow: list[str] = []
    retries: list[str] = []
    async with IncusClient.connect(coi.endpoint(), project=PROJECT) as incus:
        info = await incus.server_info()
        print(
            f"cluster of {len(cluster.members)} members up in {cluster.up_s:.1f} s ({cluster.net}.0/24), "
            f"incus {info.environment.server_version}, storage {info.environment.storage}, "
            f"clustered {info.environment.server_clustered}; N={n}, rounds {args.rounds}, "
            f"width {width}, image {BUSYBOX_IMAGE}, {os.cpu_count()} CPUs"
        )
        await latency(cluster, coi, args.requests)

        async def side(where: str, how: str, count: int, *, record: bool) -> None:
            try:
                await one_side(where, how, count, record=record)
            except* CoiError as group:
                print(f"\n    ! {where}/{how} failed, not counted: {group.exceptions[0]}", flush=True)
                await clear(incus)

        async def one_side(where: str, how: str, count: int, *, record: bool) -> None:
            if await incus.list_instances():
                await clear(incus)  # both sides start from an empty cluster
            batch = names.take(count)
            made = await create(incus, batch, targets(cluster, where, count), width)
            await give_session_data(incus, batch, width)
            if record:
                samples.setdefault((where, "create"), []).append(made)
                if made / count > 1.0:
                    slow.append(f"{where}: {made:.1f} s for {count}")
                print(f"{where}/{how} [{await placed(incus)}; create {made:.1f} s", end="", flush=True)
            if how == COI_SIDE:
                seconds = await anyio.to_thread.run_sync(lambda: coi.shutdown_all(count))
            else:
                start = time.perf_counter()
                if retried := await floor(incus, batch):
                    print(f" ({retried} exec(s) refused and retried)", end="")
                    retries.append(f"{where}: {retried} of {count}")
                seconds = time.perf_counter() - start
            if left := len(await incus.list_instances()):
                print(f"\n    ! {left} container(s) left after {where}/{how}; clearing")
                await clear(incus)
            if record:
                samples.setdefault((where, how), []).append(seconds)
                print(f", {how} {seconds:.1f} s] ", end="", flush=True)

        order = [(SPREAD, COI_SIDE), (ONE, COI_SIDE)]
        if args.floor:
            order += [(SPREAD, FLOOR_SIDE), (ONE, FLOOR_SIDE)]
        # Warm-up, not measured: coi's bytecode and the page cache, every incusd's caches, and
        # the image on each member (the first create from it on m2 and m3 copies it there).
        print(f"warm-up ({args.warmup_n} each side): ", end="", flush=True)
        for where, how in order[:2]:
            await side(where, how, args.warmup_n, record=False)
        print("done", flush=True)
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}: ", end="", flush=True)
            for where, how in order if round_no % 2 == 0 else list(reversed(order)):
                await side(where, how, n, record=True)
            print(flush=True)

    def get(where: str, what: str) -> list[float]:
        return samples.get((where, what), [])

    spread = [m.name for m in cluster.members]
    print()
    print(
        f"N = {n} sessions; spread: round-robin over {', '.join(spread)}; one member: all on m1; "
        f"medians of {args.rounds} round(s) (create: {len(get(SPREAD, 'create'))} samples a side)"
    )
    print(f"  {'':<40} {'3-member spread':>26}   {'one member (m1)':>26}   spread/one per slot")
    rows = [
        (f"create+start N (API, {width} at a time)", "create"),
        ("coi shutdown --all --force", COI_SIDE),
        ("shutdown floor (API, all at once)", FLOOR_SIDE),
    ]
    for label, key in rows:
        if not get(SPREAD, key) and not get(ONE, key):
            continue
        print(
            f"  {label:<40} {cell(get(SPREAD, key), n)}   {cell(get(ONE, key), n)}   "
            f"{ratio(med(get(SPREAD, key)), med(get(ONE, key))):>6}"
        )
    if args.floor:
        print(
            f"  coi/floor shutdown: spread {ratio(med(get(SPREAD, COI_SIDE)), med(get(SPREAD, FLOOR_SIDE)))}, "
            f"one member {ratio(med(get(ONE, COI_SIDE)), med(get(ONE, FLOOR_SIDE)))}"
        )
    goal = med(get(SPREAD, COI_SIDE)), med(get(ONE, COI_SIDE))
    if goal[0] is not None and goal[1] is not None:
        verdict = "met" if goal[0] <= goal[1] * 1.05 else "NOT met"
        print(f"  goal (spread no slower per slot than one member, within 5%) for coi shutdown: {verdict}")
    if retries:
        print(
            f"  note: floor execs refused by incusd (500 on the websocket) and retried: {'; '.join(retries)}"
        )
    if slow:
        print(f"  note: creation slower than 1 s per container: {'; '.join(slow)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=96, help="sessions per side and round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each: every side once)")
    parser.add_argument("--width", type=int, default=32, help="creates at once (coi's default --parallel)")
    parser.add_argument("--warmup-n", type=int, default=12, help="sessions per side in the warm-up")
    parser.add_argument("--requests", type=int, default=200, help="latency: requests per side and case")
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the shutdown floor (halves the run)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("a cluster on this machine needs root (network and mount namespaces)")
    began = time.perf_counter()
    with running_cluster() as cluster:
        anyio.run(bench, cluster, args, backend="asyncio")
    print(
        f"total benchmark time {time.perf_counter() - began:.0f} s (cluster bring-up and teardown included)"
    )


if __name__ == "__main__":
    main()
