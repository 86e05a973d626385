"""How a session reaches the daemon: the daemon listening inside the container (coi runs as root
here), across a restart of the container that coi never saw; and the proxy device, the way a coi
that is not root goes (`COI_EGRESS_ATTACH=proxy-device`), switched over when a root coi takes the
session on again.

Traffic goes only to loopback servers these tests start and to the Debian mirror the builds use.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coi_async.incus import IncusClient
from coi_async.orchestration.network import registry
from coi_async.orchestration.network.plan import ATTACH_ENV, EGRESS_DEVICE
from coi_async.orchestration.network.registry import Registration
from tests.coi_cli import coi
from tests.integration.egress.support import MIRROR, Session, egress_paths, loopback_server, until

pytestmark = pytest.mark.incus


async def persistent_run(environ: dict[str, str], workspace: Path, script: str) -> tuple[Session, str]:
    """`coi run --persistent -- sh -c SCRIPT`: the session (its container stays, stopped, and
    registered) and what the script printed."""
    done = await coi("run", "--persistent", "--", "sh", "-c", script, env=environ, cwd=workspace)
    assert done.code == 0, done.stderr
    (registration,) = registry.read_all(egress_paths(environ)).values()
    return Session(environ, registration), done.stdout


FETCH = f"wget -q -O /dev/null {MIRROR} && echo REACHED"


async def served(environ: dict[str, str], session: Session) -> dict[str, object]:
    done = await coi("egress", "status", "--format", "json", env=environ)
    assert done.code == 0, done.stderr
    sessions = json.loads(done.stdout)["sessions"]
    (mine,) = [s for s in sessions if s["container"] == session.name]
    return dict(mine)


async def loopback_refused(session: Session) -> bool:
    async with loopback_server() as port:
        done = await session.inside(f"wget -q -O - http://127.0.0.1:{port}/ 2>&1; echo")
    return "403" in done.stdout and "loopback-ok" not in done.stdout


async def test_the_daemon_listens_inside_the_container_and_follows_it_across_restarts(
    incus: IncusClient, env: dict[str, str], workspace: Path
) -> None:
    session, out = await persistent_run(env, workspace, FETCH)
    assert "REACHED" in out
    instance = await incus.get_instance(session.name)
    # No relay process in between: the session's device of that name is a mask.
    assert instance.expanded_devices[EGRESS_DEVICE] == {"type": "none"}

    # Started, then restarted, behind coi's back: each time a new init and a new namespace,
    # and the listener follows.
    await incus.start_instance(session.name)
    await until(lambda: session.fetch(MIRROR), within_s=20, what="egress after a start")
    assert (await served(env, session))["inside"] is True
    assert await loopback_refused(session)
    await incus.restart_instance(session.name, force=True)
    await until(lambda: session.fetch(MIRROR), within_s=20, what="egress after a restart")
    assert await loopback_refused(session)
    assert (await coi("kill", "--force", session.name, env=env)).code == 0


async def test_the_proxy_device_way_and_the_switch_to_listening_inside(
    incus: IncusClient, env: dict[str, str], workspace: Path
) -> None:
    device_env = {**env, ATTACH_ENV: "proxy-device"}
    session, out = await persistent_run(device_env, workspace, FETCH)
    assert "REACHED" in out
    registration: Registration = session.registration
    device = (await incus.get_instance(session.name)).expanded_devices[EGRESS_DEVICE]
    assert (device["type"], device["connect"]) == ("proxy", f"unix:{registration.socket}")
    async with loopback_server() as port:
        _, out = await persistent_run(
            device_env, workspace, f"wget -q -O - http://127.0.0.1:{port}/ 2>&1; echo; {FETCH}"
        )
    assert "403" in out
    assert "loopback-ok" not in out
    assert "REACHED" in out

    # The same persistent session taken on by a coi that may listen inside: the relay goes.
    again, out = await persistent_run(env, workspace, FETCH)
    assert again.name == session.name
    assert "REACHED" in out
    assert (await incus.get_instance(session.name)).expanded_devices[EGRESS_DEVICE] == {"type": "none"}
    assert (await coi("kill", "--force", session.name, env=env)).code == 0
