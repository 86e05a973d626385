"""Egress for sessions on cluster members: the daemon an operator runs beside a member's incusd
(`coi egress serve`) serves the restricted and allowlist sessions other coi processes place
there; members without one are named by `coi remote add` and are never given such a session.

The daemons of m1 and m2 run in their members' network namespaces, as an operator's would on
those machines; the test's web servers listen on the host's link inside the cluster's subnet,
which those namespaces reach over the cluster's bridge (no other address is a target)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cluster_harness import Cluster
from tests.coi_cli import COI, Run
from tests.helpers import BUSYBOX_IMAGE
from tests.integration.cluster.client import REMOTE, Client

pytestmark = pytest.mark.incus

SERVED = ("m1", "m2")
_ADVERT = "user.coi.egress.member."
_PLACED = re.compile(r"Container (\S+) is on cluster member (\S+)")
_UP_S = 30.0
_SERVE = (sys.executable, "-m", "coi_async", "egress", "serve")


@dataclass
class WebServer:
    """A tiny HTTP server on the host's link address: what reached it, and from where."""

    address: str
    server: ThreadingHTTPServer = field(init=False)
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                body = f"hello from {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((self.address, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _adverts(cluster: Cluster) -> set[str]:
    config = json.loads(cluster.incus("query", "/1.0"))["config"]
    return {k[len(_ADVERT) :] for k in config if k.startswith(_ADVERT)}


class MemberDaemons:
    """`coi egress serve` beside the incusd of each of SERVED, in its member's namespace."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.cluster = cluster
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for name in SERVED:
            member = cluster.member(name)
            runtime = root / f"run-{name}"
            runtime.mkdir(mode=0o700)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("COI_", "INCUS_", "XDG_"))}
            env.update(INCUS_DIR=str(member.directory), XDG_RUNTIME_DIR=str(runtime), HOME=str(root))
            with (root / f"daemon-{name}.log").open("wb") as log:
                self.procs[name] = subprocess.Popen(
                    ["nsenter", f"--net=/run/netns/{member.netns}", *_SERVE],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,
                )
        self.root = root

    def wait_advertised(self) -> None:
        deadline = time.monotonic() + _UP_S
        while not set(SERVED) <= _adverts(self.cluster):
            for name, proc in self.procs.items():
                assert proc.poll() is None, self.log(name)
            assert time.monotonic() < deadline, (
                "the members' daemons did not advertise themselves:\n"
                + "\n".join(self.log(name) for name in SERVED)
            )
            time.sleep(0.1)

    def log(self, name: str) -> str:
        return (self.root / f"daemon-{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


@pytest.fixture(scope="module")
def daemons(client: Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemberDaemons]:
    d = MemberDaemons(client.cluster, tmp_path_factory.mktemp("member-egress"))
    try:
        d.wait_advertised()
        yield d
    finally:
        d.stop()


@pytest.fixture
def web(client: Client) -> Iterator[tuple[WebServer, WebServer]]:
    """Two servers on the host's link: one the sessions may reach, one they may not."""
    allowed, other = WebServer(f"{client.cluster.net}.1"), WebServer(f"{client.cluster.net}.1")
    try:
        yield allowed, other
    finally:
        allowed.close()
        other.close()


def _allowlist(tmp_path: Path, server: WebServer) -> Path:
    """A config of allowlist mode that lists `server` alone."""
    config = tmp_path / "network.toml"
    config.write_text(
        f'[network]\nmode = "allowlist"\nallowed_domains = ["{server.address}:{server.port}"]\n'
    )
    return config


def _run(client: Client, *args: str, config: Path) -> Run:
    return client.over("run", *client.ws(), "--image", BUSYBOX_IMAGE, *args, COI_CONFIG=str(config))


def test_allowlist_sessions_go_to_the_members_that_serve_them_and_reach_only_what_is_listed(
    fresh: Client, daemons: MemberDaemons, web: tuple[WebServer, WebServer], tmp_path: Path
) -> None:
    allowed, other = web
    config = _allowlist(tmp_path, allowed)
    fetch = (
        f"wget -qO- http://{allowed.address}:{allowed.port}/listed; "
        f"wget -qO- http://{other.address}:{other.port}/unlisted 2>&1; echo unlisted=$?"
    )
    members = set()
    for _ in range(3):
        ran = _run(fresh, "--", "sh", "-c", fetch, config=config)
        assert ran.code == 0, ran.stderr
        found = _PLACED.search(ran.stderr)
        assert found, ran.stderr
        members.add(found[2])
        assert "hello from /listed" in ran.stdout, ran.stdout + ran.stderr
        assert "403" in ran.stdout, ran.stdout
        assert "unlisted=1" in ran.stdout, ran.stdout
    assert members <= set(SERVED), members
    assert allowed.seen == ["/listed"] * 3
    assert other.seen == []  # refused before any connect
    # A member without a daemon is never given such a session, named or not.
    before = set(fresh.locations())
    _run(fresh, "--target", "m3", "--", "true", config=config).one_error(
        1, "cluster member 'm3' runs no coi egress daemon"
    )
    assert "m3" not in fresh.locations().values()
    assert set(fresh.locations()) <= before


def test_allow_and_deny_change_a_running_remote_session_at_once(
    fresh: Client, daemons: MemberDaemons, web: tuple[WebServer, WebServer], tmp_path: Path
) -> None:
    allowed, other = web
    config = _allowlist(tmp_path, allowed)
    argv = [COI, "--remote", REMOTE, "run", *fresh.ws(), "--image", BUSYBOX_IMAGE]
    proc = subprocess.Popen(
        [*argv, "--", "sh", "-c", "echo ready; sleep 120"],
        env=fresh.env(COI_CONFIG=str(config)),
        cwd=fresh.workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        (name,) = fresh.locations()

        def fetch(server: WebServer) -> Run:
            url = f"http://{server.address}:{server.port}/live"
            return fresh.over("container", "exec", name, "--", "wget", "-qO-", url)

        assert fetch(other).code != 0
        changed = fresh.over("network", "allow", name, f"{other.address}:{other.port}")
        assert changed.code == 0, changed.stderr
        again = fetch(other)  # without --capture, the command's output is on stderr
        assert again.code == 0, again.stderr
        assert again.stderr == "hello from /live\n"
        changed = fresh.over("network", "deny", name, f"{allowed.address}:{allowed.port}")
        assert changed.code == 0, changed.stderr
        assert fetch(allowed).code != 0
        assert allowed.seen == []
        assert other.seen == ["/live"]
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_forks_of_a_restricted_session_stay_on_its_member_and_are_served_there(
    fresh: Client, daemons: MemberDaemons, tmp_path: Path
) -> None:
    config = tmp_path / "network.toml"
    config.write_text('[network]\nmode = "restricted"\n')
    shell = fresh.over("shell", "--background", *fresh.ws(), "--target", "m2", COI_CONFIG=str(config))
    assert shell.code == 0, shell.stderr
    (name,) = fresh.locations()
    forked = fresh.over("fork", name, "-n", "2", "--format", "json", COI_CONFIG=str(config))
    assert forked.code == 0, forked.stderr
    copies = [f["container"] for f in json.loads(forked.stdout)["forks"]]
    assert len(copies) == 2
    assert fresh.locations() == dict.fromkeys([name, *copies], "m2")
    for copy in copies:  # each carries the policy, and m2's daemon serves it
        found = json.loads(fresh.cluster.incus("query", f"/1.0/instances/{copy}"))["config"]
        assert json.loads(found["user.coi.egress.policy"])["mode"] == "restricted"
        assert found["user.coi.egress.served"]


def test_remote_add_names_the_members_without_a_daemon(client: Client, daemons: MemberDaemons) -> None:
    added = client.run(
        "remote", "add", "clu-again", client.cluster.url, "--token", client.cluster.trust_token("again")
    )
    try:
        assert added.code == 0, added.stderr
        assert "No coi egress daemon on: m3 (" in added.stdout, added.stdout
    finally:
        client.run("remote", "remove", "clu-again")


def test_without_any_daemon_a_restricted_session_is_refused(
    fresh: Client, daemons: MemberDaemons, tmp_path: Path
) -> None:
    daemons.stop()
    assert _adverts(fresh.cluster) == set()  # each took its advert back on the way out
    config = tmp_path / "network.toml"
    config.write_text('[network]\nmode = "restricted"\n')
    before = set(fresh.locations())
    _run(fresh, "--", "true", config=config).one_error(
        1, "network mode 'restricted' needs coi's egress daemon beside the server's incusd"
    )
    assert set(fresh.locations()) <= before
