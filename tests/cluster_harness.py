"""A real 3-member Incus cluster on this machine, for the cluster tests (set-up only: it drives
`ip`, `nsenter`, `unshare`, incusd and the `incus` CLI; product code never does).

The layout and its network-safety rules are ../shared/reference/incus-cluster-on-one-machine.md's:

* an `unreachable` guard route for the cluster's subnet in the host namespace, made and checked
  before anything else (GuardRouteMissingError when it is not there; every `check_network` checks
  it again) and removed at teardown, so nothing for the subnet can follow the default route;
* members m1..m3, each in its own network namespace with only `lo` and `eth0` (10.77.N.1I/24)
  and no default route, joined by a bridge in a hub namespace; no NAT, ip_forward stays 0; IPv6
  off everywhere;
* one host veth in the subnet (10.77.N.1), the only way the host reaches member addresses: the
  coi under test talks to https://10.77.N.11:8443 over it; the join preseeds run inside the
  joiner's namespace;
* each incusd in its member's netns and a slave mount namespace of its own (this netns's sysfs,
  the host's cgroup tree), with INCUS_DIR under /var/tmp (the containers' mapped root must
  traverse it), its start-up fetch of instance types failing at once for want of a route.

N is random and checked against the routes and addresses already on the machine, and the
namespace and link names carry a random tag, so several runs can share the machine. Teardown
(also after a failed bring-up) deletes the instances, stops the daemons (SIGKILL after a grace),
kills what is left of their containers by pid, and removes the namespaces, links, guard route
and directories. After bring-up and teardown it checks that ip_forward is 0 and that no
namespace of the run has a default route.

A cluster is driven from its Popen objects in the process that made it, or from its members' pids
in another one (`Member.pid`): tests/cluster_cli.py, behind scripts/cluster-up and cluster-down,
keeps one up between processes with its state in a file.

The cluster keeps incusd's own certificate (m1's, naming the host, not the member addresses):
coi pins a remote's certificate as the only trust anchor and does not check host names, so no
member-address certificate is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster_member import (
    MEMBERS,
    PORT,
    WAIT_S,
    ClusterError,
    GuardRouteMissingError,
    Member,
    cluster_images,
    ip,
    sh,
)
from tests.leak_watch import LeakWatch

_NO_IPV6 = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def _free_subnet() -> str:
    """`10.77.N` with N random and not in any route or address of the host namespace."""
    used = sh("ip", "-4", "route", "show", "table", "all") + sh("ip", "-4", "-o", "addr")
    for _ in range(50):
        net = f"10.77.{random.randint(100, 250)}"
        if f"{net}." not in used:
            return net
    raise ClusterError("no free 10.77.N.0/24 subnet")


@dataclass
class Cluster:
    tag: str
    net: str
    base: Path
    members: list[Member]
    started: float = 0.0
    up_s: float = 0.0
    # What teardown undoes, in the order made.
    namespaces: list[str] = field(default_factory=list)
    guard: bool = False
    host_link: str = ""
    watch: LeakWatch | None = None

    @property
    def hub(self) -> str:
        return f"{self.tag}-hub"

    @property
    def first(self) -> Member:
        return self.members[0]

    @property
    def url(self) -> str:
        return self.first.url

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def incus(self, *args: str, stdin: str = "", check: bool = True, via: Member | None = None) -> str:
        """The `incus` CLI on a live member's unix socket (m1's unless `via`)."""
        member = via or next((m for m in self.members if m.alive()), self.first)
        return sh("incus", *args, env=member.env, stdin=stdin, check=check)

    # --- bring-up ----------------------------------------------------------------------------

    def _guard(self) -> None:
        """The guard route, checked before anything else is made."""
        sh("ip", "route", "add", "unreachable", f"{self.net}.0/24", "metric", "4000")
        self.guard = True
        self.require_guard()

    def _network(self) -> None:
        subnet = f"{self.net}.0/24"
        self.watch = LeakWatch(self.tag, subnet)
        self.watch.start()
        for ns in [self.hub, *(m.netns for m in self.members)]:
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", *_NO_IPV6)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for m in self.members:
            inner, outer = f"{self.tag}a{m.index}", f"{self.tag}b{m.index}"
            ip(f"link add {inner} netns {m.netns} type veth peer name {outer} netns {self.hub}")
            sh("ip", "-n", m.netns, "link", "set", inner, "name", "eth0")
            sh("ip", "-n", m.netns, "addr", "add", f"{m.address}/24", "dev", "eth0")
            sh("ip", "-n", m.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", self.hub, "link", "set", outer, "name", m.name)
            sh("ip", "-n", self.hub, "link", "set", m.name, "master", "br0", "up")
        self.host_link = f"{self.tag}-h"
        sh("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "hostport", "netns", self.hub)
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.host_link}.disable_ipv6=1")
        sh("ip", "-n", self.hub, "link", "set", "hostport", "master", "br0", "up")
        sh("ip", "addr", "add", f"{self.net}.1/24", "dev", self.host_link)
        sh("ip", "link", "set", self.host_link, "up")

    def leaked(self) -> int:
        """The subnet's packets that went out of the default route's interface (it must be 0)."""
        return self.watch.packets() if self.watch is not None else 0

    def guarded(self) -> bool:
        return f"unreachable {self.net}.0/24" in sh("ip", "route", "show", check=False)

    def require_guard(self) -> None:
        if not self.guarded():
            raise GuardRouteMissingError(
                f"the guard route 'unreachable {self.net}.0/24' is missing from the host namespace"
            )

    def check_network(self, *, routed: bool = True) -> None:
        """ip_forward is 0; no namespace of ours has a default route; until teardown (`routed`)
        the guard route is there and the subnet is the host veth's (or unreachable), never the
        gateway's; nothing of the subnet went out of the default route's interface."""
        if leaked := self.leaked():
            raise ClusterError(f"{leaked} packets of {self.net}.0/24 left by the default route")
        if sh("sysctl", "-n", "net.ipv4.ip_forward").strip() != "0":
            raise ClusterError("net.ipv4.ip_forward is not 0")
        for ns in self.namespaces:
            if Path(f"/run/netns/{ns}").exists() and sh("ip", "-n", ns, "route", "show", "default").strip():
                raise ClusterError(f"namespace {ns} has a default route")
        if routed:
            self.require_guard()
        got = sh("ip", "route", "get", f"{self.net}.11", check=False) if routed else ""
        if " via " in got:
            raise ClusterError(f"{self.net}.11 is routed via a gateway: {got.strip()}")

    def _export_images(self) -> list[subprocess.Popen[bytes]]:
        images = self.base / "images"
        images.mkdir()
        aliases = cluster_images()
        return [
            subprocess.Popen(
                ["incus", "image", "export", alias, str(images / alias)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for alias in aliases
        ]

    def _bootstrap(self) -> None:
        m1 = self.first
        self.incus(
            "admin",
            "init",
            "--preseed",
            via=m1,
            stdin=(
                f'config: {{core.https_address: "{m1.address}:{PORT}", images.auto_update_interval: "0"}}\n'
                "storage_pools: [{name: default, driver: dir}]\n"
                "profiles: [{name: default, devices: {root: {path: /, pool: default, type: disk}}}]\n"
                f"cluster: {{server_name: {m1.name}, enabled: true}}\n"
            ),
        )
        # An offline member is seen as such after 11 s (the least incusd takes), not 20.
        self.incus("config", "set", "cluster.offline_threshold", "11", via=m1)
        for m in self.members[1:]:
            token = self.incus("cluster", "add", m.name, "--quiet", via=m1).strip()
            preseed = (
                "cluster:\n  enabled: true\n"
                f"  server_name: {m.name}\n  server_address: {m.address}:{PORT}\n"
                f"  cluster_address: {m1.address}:{PORT}\n  cluster_token: {token}\n"
                "  member_config:\n  - {entity: storage-pool, name: default, key: source, value: ''}\n"
            )
            # Inside the joiner's netns: the CLI itself connects to cluster_address.
            sh(*f"ip netns exec {m.netns} incus admin init --preseed".split(), env=m.env, stdin=preseed)

    def wait_online(self, names: Sequence[str] | None = None, *, timeout_s: float = WAIT_S) -> None:
        wanted = set(names or [m.name for m in self.members])
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.states()
            if all(states.get(n) == "Online" for n in wanted):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"members not online after {timeout_s:g} s: {states}")
            time.sleep(0.2)

    def wait_offline(self, name: str, *, timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.states().get(name) != "Offline":
            if time.monotonic() > deadline:
                raise ClusterError(f"{name} not offline after {timeout_s:g} s")
            time.sleep(0.3)

    def states(self) -> dict[str, str]:
        listed = json.loads(self.incus("query", "/1.0/cluster/members?recursion=1"))
        return {m["server_name"]: m["status"] for m in listed}

    def _import_images(self, exports: list[subprocess.Popen[bytes]]) -> None:
        for export in exports:
            _, err = export.communicate(timeout=120)
            if export.returncode != 0:
                raise ClusterError(f"image export: {err.decode().strip()}")
        for alias in cluster_images():
            files = sorted(str(p) for p in (self.base / "images").glob(f"{alias}*"))
            self.incus("image", "import", *files, "--alias", alias)
        shutil.rmtree(self.base / "images", ignore_errors=True)

    def up(self) -> None:
        self.started = time.monotonic()
        self._guard()
        self.base.mkdir(mode=0o711)
        (self.base / "conf").mkdir(mode=0o700)
        exports = self._export_images()
        try:
            self._network()
            for m in self.members:
                m.directory.mkdir(mode=0o711)
                m.spawn()
            for m in self.members:
                m.wait_ready()
            self._bootstrap()
            self.wait_online()
            self._import_images(exports)
        finally:
            for export in exports:
                if export.poll() is None:
                    export.kill()
                    export.wait()
        self.check_network()
        self.up_s = time.monotonic() - self.started

    def trust_token(self, name: str) -> str:
        return self.incus("config", "trust", "add", name, "--quiet").strip()

    def restart(self, member: Member) -> None:
        member.spawn()
        member.wait_ready()
        self.wait_online([member.name])

    # --- teardown ----------------------------------------------------------------------------

    def delete_instances(self) -> None:
        if not any(m.alive() for m in self.members):
            return
        try:
            listed = json.loads(self.incus("query", "/1.0/instances?all-projects=true&recursion=1"))
        except ClusterError:
            return
        deletes = [
            subprocess.Popen(
                ["incus", "delete", "--force", "--project", i["project"], i["name"]],
                env=next(m for m in self.members if m.alive()).env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in listed
        ]
        for d in deletes:
            try:
                d.wait(timeout=60)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()

    def _leftover_pids(self) -> list[int]:
        """Processes of this cluster's containers ([lxc monitor] <base>/mI/... and their inits)."""
        marker = str(self.base).encode()
        monitors: set[int] = set()
        parents: dict[int, int] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if marker in (proc / "cmdline").read_bytes():
                    monitors.add(int(proc.name))
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(proc.name)] = int(stat[1])
            except (OSError, IndexError, ValueError):
                continue
        children = {pid for pid, parent in parents.items() if parent in monitors}
        return sorted(children | monitors)

    def down(self) -> None:
        self.delete_instances()
        for m in self.members:
            if m.alive() or m.process is not None or m.pid:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    m.stop()
        for pid in self._leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for line in Path("/proc/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith(str(self.base) + "/"):
                sh("umount", "-l", point, check=False)
        with contextlib.suppress(ClusterError):
            self.check_network()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        if self.host_link:
            sh("ip", "link", "del", self.host_link, check=False)
        if self.guard:
            sh("ip", "route", "del", "unreachable", f"{self.net}.0/24", "metric", "4000", check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        try:
            self.check_network(routed=False)
        finally:
            if self.watch is not None:
                self.watch.stop()
        if sh("ip", "route", "show", "table", "all", check=False).count(f"{self.net}.0/24"):
            raise ClusterError(f"a route for {self.net}.0/24 is left")


def new_cluster(members: int = MEMBERS) -> Cluster:
    tag = f"cc{secrets.token_hex(2)}"
    net = _free_subnet()
    base = Path(f"/var/tmp/coi-test-cluster-{tag}")
    return Cluster(
        tag=tag,
        net=net,
        base=base,
        members=[Member(i, base, f"{tag}-m{i}", f"{net}.{10 + i}") for i in range(1, members + 1)],
    )


@contextlib.contextmanager
def running_cluster(members: int = MEMBERS) -> Iterator[Cluster]:
    """A cluster that is up, torn down afterwards whatever happened."""
    cluster = new_cluster(members)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
