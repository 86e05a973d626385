"""scripts/cluster-up and scripts/cluster-down: a test cluster (tests/cluster_harness.py's) that
stays up between two commands, for trying coi against a cluster by hand.

`up [--name NAME]` brings one up (about 4 s) with its member incusd processes detached, and writes
its state to /var/tmp/coi-clusters/NAME.json (a copy goes to its base directory, state.json).
While NAME is up and healthy (members alive, namespaces and host link there, guard route present,
`check_network` passes) it only prints the same information with a fresh trust token; a stale
state (members dead, after a reboot) is cleaned and the cluster made again. `down [--name NAME]`
tears it down from the state file; nothing there is a message and exit 0.

Safety as the harness's: the guard route is made and checked before any namespace or address,
and checked again before a running cluster is reused. When it is missing the command refuses
(exit 2, one line) and tears down what there is. One command per NAME at a time (a lock file).

COI_TEST_CLUSTER_DROP_GUARD=1 is for tests/integration/test_cluster_scripts.py only: the guard
route is deleted right after it is made, so `up` must refuse before anything else exists.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.cluster_harness import Cluster, new_cluster
from tests.cluster_member import ClusterError, GuardRouteMissingError, Member, sh
from tests.leak_watch import LeakWatch

INDEX = Path("/var/tmp/coi-clusters")
DEFAULT_NAME = "coi-dev"
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_DROP_GUARD = "COI_TEST_CLUSTER_DROP_GUARD"
REFUSED, FAILED = 2, 1


# --- state ------------------------------------------------------------------------------------


def to_state(cluster: Cluster, name: str) -> dict[str, Any]:
    watch = cluster.watch
    return {
        "name": name,
        "tag": cluster.tag,
        "net": cluster.net,
        "subnet": f"{cluster.net}.0/24",
        "base": str(cluster.base),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "up_s": round(cluster.up_s, 2),
        "url": cluster.url,
        "members": [
            {
                "index": m.index,
                "name": m.name,
                "netns": m.netns,
                "address": m.address,
                "url": m.url,
                "pid": m.pid,
            }
            for m in cluster.members
        ],
        "namespaces": cluster.namespaces,
        "guard": cluster.guard,
        "host_link": cluster.host_link,
        "host_address": f"{cluster.net}.1",
        "nft": {"table": watch.table, "interface": watch.interface, "made": watch.made} if watch else None,
    }


def from_state(state: dict[str, Any]) -> Cluster:
    base = Path(state["base"])
    cluster = Cluster(
        tag=state["tag"],
        net=state["net"],
        base=base,
        members=[Member(m["index"], base, m["netns"], m["address"], pid=m["pid"]) for m in state["members"]],
        up_s=state["up_s"],
        namespaces=list(state["namespaces"]),
        guard=state["guard"],
        host_link=state["host_link"],
    )
    if nft := state["nft"]:
        cluster.watch = LeakWatch(cluster.tag, state["subnet"])
        cluster.watch.interface = nft["interface"]
        # A table that is gone (a reboot) is not there to read or delete.
        cluster.watch.made = nft["made"] and _table_exists(nft["table"])
    return cluster


def _table_exists(table: str) -> bool:
    return f"table inet {table}" in sh("nft", "list", "tables", "inet", check=False)


def index_file(name: str) -> Path:
    return INDEX / f"{name}.json"


def _write(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def save(cluster: Cluster, name: str) -> None:
    """The index file (before bring-up too, so that whatever a crash leaves can be cleaned), and
    a copy in the cluster's base directory once it exists."""
    state = to_state(cluster, name)
    _write(index_file(name), state)
    if cluster.base.is_dir():
        _write(cluster.base / "state.json", state)


def load(name: str) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(index_file(name).read_text())
    except FileNotFoundError:
        return None
    return state


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """One command per NAME at a time. The lock file lives as long as the index file (so the one
    locked must still be the one at the path)."""
    INDEX.mkdir(mode=0o755, exist_ok=True)
    path = INDEX / f"{name}.lock"
    while True:
        with path.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(f.fileno()).st_ino == path.stat().st_ino:
                    try:
                        yield
                    finally:
                        if not index_file(name).exists():
                            path.unlink()
                    return


# --- health -----------------------------------------------------------------------------------


def _live(cluster: Cluster) -> bool:
    """Anything of it still running or linked (after a reboot, nothing is)."""
    return (
        any(m.alive() for m in cluster.members)
        or any(Path(f"/run/netns/{ns}").exists() for ns in cluster.namespaces)
        or (bool(cluster.host_link) and Path(f"/sys/class/net/{cluster.host_link}").exists())
    )


def _whole(cluster: Cluster, state: dict[str, Any]) -> bool:
    return (
        all(m.alive() for m in cluster.members)
        and all(Path(f"/run/netns/{ns}").exists() for ns in cluster.namespaces)
        and Path(f"/sys/class/net/{cluster.host_link}").exists()
        and not _table_lost(cluster, state)
    )


def _table_lost(cluster: Cluster, state: dict[str, Any]) -> bool:
    """The nft table was made, and is gone."""
    made = bool(state["nft"] and state["nft"]["made"])
    return made and not (cluster.watch is not None and cluster.watch.made)


def left_over(cluster: Cluster) -> list[str]:
    """What of the cluster is still on the machine after teardown (nothing, if all went well)."""
    left = [f"namespace {p.name}" for p in Path("/run/netns").glob(f"{cluster.tag}-*")]
    left += [f"link {p.name}" for p in Path("/sys/class/net").glob(f"{cluster.tag}*")]
    if f"{cluster.net}.0/24" in sh("ip", "route", "show", "table", "all", check=False):
        left.append(f"a route for {cluster.net}.0/24")
    if cluster.watch is not None and _table_exists(cluster.watch.table):
        left.append(f"nft table inet {cluster.watch.table}")
    marker = str(cluster.base).encode()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                left.append(f"process {proc.name}")
    if cluster.base.exists():
        left.append(f"directory {cluster.base}")
    return left


# --- commands ---------------------------------------------------------------------------------


def _say(command: str, line: str) -> None:
    print(f"cluster-{command}: {line}", file=sys.stderr)


def _teardown(cluster: Cluster, name: str, command: str) -> bool:
    """`Cluster.down` and the checks that nothing is left; the index file goes when it worked."""
    try:
        cluster.down()
    except (ClusterError, RuntimeError, OSError) as e:
        _say(command, f"teardown of {name} ({cluster.tag}): {e}")
        return False
    if left := left_over(cluster):
        _say(command, f"teardown of {name} ({cluster.tag}) left {', '.join(left)}")
        return False
    index_file(name).unlink(missing_ok=True)
    return True


def _print_info(cluster: Cluster, name: str, token: str, *, since: str = "") -> None:
    how = f"already up since {since}" if since else f"up in {cluster.up_s:.1f} s"
    print(
        f"Cluster {name} is {how}: {len(cluster.members)} members on {cluster.net}.0/24 (tag {cluster.tag})"
    )
    for m in cluster.members:
        print(f"  {m.name}  {m.url}  netns {m.netns}  pid {m.pid}")
    print(
        f"The host reaches it only over {cluster.host_link} ({cluster.net}.1); members have no default route."
    )
    print("Add it to coi (the token is new and good for one client):")
    print(f"  coi remote add {name} {cluster.url} --token {token}")
    print(
        f"incus on m1: INCUS_DIR={cluster.first.directory} INCUS_CONF={cluster.base}/conf incus cluster list"
    )
    print(f"Tear it down: {SCRIPTS / 'cluster-down'} --name {name}")


class _GuardDropped(Cluster):
    """COI_TEST_CLUSTER_DROP_GUARD=1: the guard route vanishes right after it is made."""

    def require_guard(self) -> None:
        if not self.namespaces:
            sh("ip", "route", "del", "unreachable", f"{self.net}.0/24", "metric", "4000", check=False)
        super().require_guard()


def _reuse(cluster: Cluster, state: dict[str, Any], name: str) -> int | None:
    """The exit code when the cluster in the state file is reused or refused; None when it is
    stale (then cleaned) and must be made again."""
    if _live(cluster):
        try:
            cluster.require_guard()
            cluster.check_network()
        except ClusterError as e:
            what = "refused" if isinstance(e, GuardRouteMissingError) else "refused, the network is not safe"
            _say("up", f"{what}: {e} (cluster {name}, {cluster.tag}); tearing it down")
            _teardown(cluster, name, "up")
            return REFUSED
        if _whole(cluster, state):
            with contextlib.suppress(ClusterError):
                _print_info(cluster, name, _token(cluster), since=state["created"])
                return 0
    _say("up", f"cluster {name} ({cluster.tag}) is stale; cleaning it and making it again")
    return None if _teardown(cluster, name, "up") else FAILED


def _token(cluster: Cluster) -> str:
    return cluster.trust_token(f"coi-{secrets.token_hex(3)}")


def up(name: str) -> int:
    with locked(name):
        if (state := load(name)) is not None:
            code = _reuse(from_state(state), state, name)
            if code is not None:
                return code
        cluster = new_cluster()
        if os.environ.get(_DROP_GUARD) == "1":
            cluster = _GuardDropped(**vars(cluster))
        save(cluster, name)
        try:
            cluster.up()
            save(cluster, name)
            token = _token(cluster)
        except GuardRouteMissingError as e:
            _say("up", f"refused: {e} (cluster {name}, {cluster.tag}); nothing was started")
            _teardown(cluster, name, "up")
            return REFUSED
        except (ClusterError, RuntimeError, OSError) as e:
            _say("up", f"bring-up of {name} ({cluster.tag}) failed: {e}; tearing it down")
            _teardown(cluster, name, "up")
            return FAILED
        except BaseException:
            _say("up", f"interrupted; tearing down {name} ({cluster.tag})")
            _teardown(cluster, name, "up")
            raise
        _print_info(cluster, name, token)
        return 0


def down(name: str) -> int:
    with locked(name):
        state = load(name)
        if state is None:
            print(f"No cluster {name} here; nothing to do.")
            return 0
        cluster = from_state(state)
        began = time.monotonic()
        if not _teardown(cluster, name, "down"):
            return FAILED
        print(f"Cluster {name} ({cluster.tag}) is down ({time.monotonic() - began:.1f} s).")
        return 0


_ABOUT = {
    "up": "Bring up a 3-member test Incus cluster on this machine, or reuse the one of that name.",
    "down": "Tear down the test cluster cluster-up made.",
}


def main(argv: list[str] | None = None) -> int:
    """`up|down [--name NAME]`."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in _ABOUT:
        print("usage: python -m tests.cluster_cli up|down [--name NAME]", file=sys.stderr)
        return REFUSED
    command = argv[0]
    parser = argparse.ArgumentParser(prog=f"cluster-{command}", description=_ABOUT[command])
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"the cluster's name (default {DEFAULT_NAME})")
    name: str = parser.parse_args(argv[1:]).name
    if not _NAME.fullmatch(name):
        parser.error(f"--name {name!r}: 1-32 of a-z, 0-9 and '-', starting with a letter or digit")
    if os.geteuid() != 0:
        _say(command, "run as root (it makes network and mount namespaces, routes and incusd processes)")
        return FAILED
    # A SIGTERM or SIGHUP during bring-up tears down as Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    try:
        return up(name) if command == "up" else down(name)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
