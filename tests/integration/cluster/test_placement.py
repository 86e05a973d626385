"""Sessions on a real 3-member Incus cluster (tests/cluster_harness.py) reached as a coi remote:
placement by policy and by `--target`, race-free slots across members, the location in `coi
list`, `shutdown --all` across every member at once, an offline member reported while the others
go on, and bad input refused with one line before anything is made."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.coi_cli import COI, Run, coi_env, coi_sync
from tests.helpers import BUSYBOX_IMAGE
from tests.integration.cluster.client import PREFIX, REMOTE, Client

pytestmark = pytest.mark.incus

SESSIONS = 10


def _shells(client: Client, *extras: tuple[str, ...]) -> list[subprocess.CompletedProcess[bytes]]:
    """Concurrent `coi --remote clu shell --background`, one for each `extras` (its extra args)."""
    argv = [COI, "--remote", REMOTE, "shell", "--background", *client.ws()]
    procs = [
        subprocess.Popen(
            [*argv, *extra],
            env=client.env(),
            cwd=client.workspace,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for extra in extras
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def test_ten_concurrent_shells_take_ten_slots_spread_evenly_and_shutdown_all_ends_them(fresh: Client) -> None:
    began = time.monotonic()
    results = _shells(fresh, *[()] * SESSIONS)
    launched_s = time.monotonic() - began
    for r in results:
        assert r.returncode == 0, r.stderr.decode()
    placed = fresh.placed()
    assert len(placed) == SESSIONS
    slots = sorted(int(name.rsplit("-", 1)[1]) for name in placed)
    assert slots == list(range(1, SESSIONS + 1))
    # `location` in JSON is incusd's own, and every session is on one of the three members.
    assert placed == fresh.locations()
    per_member = collections.Counter(placed.values())
    # Every member takes a share. Not always 4/3/3: a launch that lists the instances before
    # the others' creates show cannot count them; but one that loses slots counts them where
    # their winners put them, so no member takes the lion's share.
    assert sorted(per_member) == ["m1", "m2", "m3"], per_member
    assert max(per_member.values()) <= 5, per_member
    text = fresh.over("list")
    assert text.stdout.count("    Location: m") == SESSIONS, text.stdout

    began = time.monotonic()
    shut = fresh.over("shutdown", "--all", "--force")
    shutdown_s = time.monotonic() - began
    assert shut.code == 0, shut.stderr
    assert fresh.locations() == {}
    assert len(fresh.sessions()) >= SESSIONS
    print(
        f"{SESSIONS} shells in {launched_s:.1f} s, shutdown --all in {shutdown_s:.1f} s: {dict(per_member)}"
    )


_PLACED = re.compile(r"Container (\S+) is on cluster member (\S+)")


def _member_of(started: Run) -> str:
    assert started.code == 0, started.stderr
    found = _PLACED.search(started.stderr)
    assert found, started.stderr
    return found[2]


class Runs:
    """`coi run` sessions left running in the background (a busybox `sleep`): cheap running
    sessions for placement to count."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str, **env: str) -> str:
        """One more, once incusd has it: its member."""
        argv = [COI, "--remote", REMOTE, "run", *self.client.ws(), "--image", BUSYBOX_IMAGE, *extra]
        proc = subprocess.Popen(
            [*argv, "--", "sleep", "300"],
            env=self.client.env(**env),
            cwd=self.client.workspace,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        assert proc.stderr is not None
        seen = b""
        for line in proc.stderr:
            seen += line
            if found := _PLACED.search(line.decode()):
                return found[2]
        raise AssertionError(f"no placement: {seen.decode()}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


@pytest.fixture
def runs(fresh: Client) -> Iterator[Runs]:
    r = Runs(fresh)
    try:
        yield r
    finally:
        r.close()


def test_target_and_the_placement_policies(fresh: Client, runs: Runs, tmp_path: Path) -> None:
    shell = fresh.over("shell", "--background", *fresh.ws(), "--target", "m2")
    assert _member_of(shell) == "m2"
    assert runs.start("--target", "m3") == "m3"
    policy = tmp_path / "policy.toml"
    policy.write_text('[placement]\npolicy = "member:m3"\n')
    assert runs.start(COI_CONFIG=str(policy)) == "m3"
    # pack: the busiest member with room; spread: the one with the fewest sessions.
    policy.write_text('[placement]\npolicy = "pack"\n')
    assert runs.start(COI_CONFIG=str(policy)) == "m3"
    assert runs.start() == "m1"
    placed = fresh.placed()
    assert collections.Counter(placed.values()) == {"m3": 3, "m2": 1, "m1": 1}
    assert placed == fresh.locations()

    # shutdown --all: every member's at once; coi info shows where the shell's session ran.
    shut = fresh.over("shutdown", "--all", "--force")
    assert shut.code == 0, shut.stdout + shut.stderr
    assert fresh.locations() == {}
    name = _PLACED.search(shell.stderr)[1]  # type: ignore[index]
    saved = fresh.latest_session(name)
    info = fresh.over("info", saved.name)
    assert "Location:       m2" in info.stdout, info.stdout


def test_an_offline_member_is_reported_and_the_others_go_on(fresh: Client) -> None:
    cluster = fresh.cluster
    for r in _shells(fresh, *[("--target", m) for m in ("m1", "m2", "m3")]):
        assert r.returncode == 0, r.stderr.decode()
    placed = fresh.placed()
    assert sorted(placed.values()) == ["m1", "m2", "m3"]
    m3 = cluster.member("m3")
    m3.stop()
    try:
        cluster.wait_offline("m3")
        listed = fresh.over("list", "--format", "json")
        assert listed.code == 0, listed.stderr
        statuses = {
            c["name"]: (c["status"], c.get("location"))
            for c in json.loads(listed.stdout)["active_containers"]
        }
        offline = next(n for n, m in placed.items() if m == "m3")
        assert statuses[offline] == ("Error", "m3")
        # A new session avoids it; naming it is refused.
        (fresh.over("run", *fresh.ws(), "--target", "m3", "--", "true")).one_error(
            2, "cluster member 'm3' is offline"
        )
        ran = fresh.over("run", *fresh.ws(), "--image", BUSYBOX_IMAGE, "--", "true")
        assert _member_of(ran) != "m3"

        shut = fresh.over("shutdown", "--all", "--force")
        assert shut.code != 0
        assert f"{offline}: cluster member m3 is offline; left as it is" in shut.stdout, shut.stdout
        assert "Traceback" not in shut.stderr
        assert set(fresh.locations()) == {offline}
    finally:
        cluster.restart(m3)
    left = fresh.latest_session(offline)
    assert not (left / ".claude").exists()
    # Once it is back, a rerun finishes what it left: the session saved, the container gone.
    again = fresh.over("shutdown", "--all", "--force")
    assert again.code == 0, again.stdout + again.stderr
    assert fresh.locations() == {}
    assert (left / ".claude").is_dir()


def test_bad_input_is_one_line_and_makes_nothing(fresh: Client, tmp_path: Path) -> None:
    fresh.over("shell", "--background", *fresh.ws(), "--target", "m9").one_error(
        2, "unknown cluster member 'm9' (members: m1, m2, m3)"
    )
    fresh.over("run", *fresh.ws(), "--target", "nowhere", "--", "true").one_error(2, "unknown cluster member")
    policy = tmp_path / "policy.toml"
    for bad in ("fill", "member:", "member:m9"):
        policy.write_text(f'[placement]\npolicy = "{bad}"\n')
        done = fresh.over("shell", "--background", *fresh.ws(), COI_CONFIG=str(policy))
        if bad == "member:m9":
            done.one_error(2, "unknown cluster member 'm9'")
        else:
            done.one_error(2, "placement.policy", "spread, pack or member:NAME")
    assert fresh.locations() == {}


async def test_target_on_a_standalone_server_is_refused(incus_project: str, tmp_path: Path) -> None:
    """This machine's incusd is no cluster: `--target` is one line, and nothing is made."""
    env = coi_env(home=tmp_path, project=incus_project, prefix=PREFIX, drop=("COI_",))
    done = coi_sync("run", "--image", BUSYBOX_IMAGE, "--target", "m1", "--", "true", env=env, cwd=tmp_path)
    done.one_error(2, "--target m1: the server is not a cluster")


def test_nothing_for_the_cluster_subnet_left_the_machine(client: Client) -> None:
    """Last of the package (modules run in name order): after every cluster test so far, the guard
    route is in place and no packet to or from the subnet went out by the default route."""
    assert client.cluster.guarded()
    assert client.cluster.leaked() == 0
