"""scripts/cluster-up and scripts/cluster-down as a developer runs them (real processes, a real
3-member cluster): up is idempotent and fast the second time, a coi client adds the cluster with
the token it prints, down leaves nothing and is a no-op the second time, a stale cluster is made
again, and a missing guard route is refused (before anything exists on a fresh up, with the
cluster torn down on a running one)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_cli import INDEX, from_state, left_over
from tests.cluster_member import sh
from tests.coi_cli import coi_env, coi_sync

pytestmark = [pytest.mark.incus, pytest.mark.timeout(300)]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
_ADD = re.compile(r"coi remote add (\S+) (\S+) --token (\S+)")


def script(which: str, name: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run(
        [str(SCRIPTS / f"cluster-{which}"), "--name", name],
        env={**os.environ, **env},
        cwd="/",  # any cwd will do
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return done, time.monotonic() - began


def state_of(name: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((INDEX / f"{name}.json").read_text())
    return state


@pytest.fixture
def name() -> Iterator[str]:
    """A cluster name of this test's own, torn down afterwards whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("a cluster on this machine needs root (network and mount namespaces)")
    n = f"t-{secrets.token_hex(3)}"
    try:
        yield n
    finally:
        if (INDEX / f"{n}.json").exists():
            script("down", n)


def test_up_twice_is_one_cluster_coi_adds_it_and_down_twice_leaves_nothing(name: str, tmp_path: Path) -> None:
    first, up_s = script("up", name)
    assert first.returncode == 0, first.stderr
    state = state_of(name)
    cluster = from_state(state)
    assert all(m.alive() for m in cluster.members)
    assert cluster.guarded()
    cluster.check_network()
    assert json.loads((cluster.base / "state.json").read_text())["tag"] == state["tag"]

    second, again_s = script("up", name)
    assert second.returncode == 0, second.stderr
    assert "already up" in second.stdout
    assert state_of(name)["members"] == state["members"]  # the same daemons
    assert again_s < 3.0, again_s  # well under a second on an idle machine
    (remote, url, token) = _ADD.findall(second.stdout)[0]
    assert (remote, url) == (name, state["url"])
    assert token != _ADD.findall(first.stdout)[0][2]

    env = coi_env(home=tmp_path / "home", drop=("COI_",))
    added = coi_sync("remote", "add", name, url, "--token", token, env=env, cwd=tmp_path)
    assert added.code == 0, added.stderr
    listed = coi_sync("--remote", name, "list", "--format", "json", env=env, cwd=tmp_path)
    assert listed.code == 0, listed.stderr
    assert json.loads(listed.stdout)["active_containers"] == []

    down, down_s = script("down", name)
    assert down.returncode == 0, down.stderr
    assert f"Cluster {name} ({state['tag']}) is down" in down.stdout
    assert left_over(cluster) == []
    assert not (INDEX / f"{name}.json").exists()
    assert not (INDEX / f"{name}.lock").exists()

    again, _ = script("down", name)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    print(f"cluster-up {up_s:.1f} s, again {again_s:.2f} s; cluster-down {down_s:.1f} s")


def test_up_refuses_at_once_when_the_guard_route_is_missing(name: str) -> None:
    refused, refused_s = script("up", name, COI_TEST_CLUSTER_DROP_GUARD="1")
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "refused: the guard route 'unreachable 10.77." in lines[0]
    assert "nothing was started" in lines[0]
    tag = re.findall(rf"\(cluster {name}, (cc[0-9a-f]+)\)", lines[0])[0]
    # Refused before its base directory, any namespace, link or nft table was made.
    assert not list(Path("/run/netns").glob(f"{tag}-*"))
    assert not list(Path("/sys/class/net").glob(f"{tag}*"))
    assert not Path(f"/var/tmp/coi-test-cluster-{tag}").exists()
    assert f"coi_leak_{tag}" not in sh("nft", "list", "tables")
    assert not (INDEX / f"{name}.json").exists()
    assert refused_s < 5.0, refused_s


def test_a_stale_cluster_is_made_again_and_a_lost_guard_route_tears_it_down(name: str) -> None:
    made, _ = script("up", name)
    assert made.returncode == 0, made.stderr
    old = from_state(state_of(name))
    os.kill(old.member("m2").pid, 9)  # a member gone: the cluster is stale

    remade, _ = script("up", name)
    assert remade.returncode == 0, remade.stderr
    assert f"cluster {name} ({old.tag}) is stale" in remade.stderr
    assert left_over(old) == []
    new = from_state(state_of(name))
    assert new.tag != old.tag
    assert all(m.alive() for m in new.members)

    subprocess.run(["ip", "route", "del", "unreachable", f"{new.net}.0/24", "metric", "4000"], check=True)
    refused, _ = script("up", name)
    assert refused.returncode == 2, refused.stderr
    assert f"refused: the guard route 'unreachable {new.net}.0/24' is missing" in refused.stderr
    assert left_over(new) == []
    assert not (INDEX / f"{name}.json").exists()
