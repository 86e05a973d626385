"""Network isolation on the real incusd: what a session reaches in each mode, no NIC whatever the
profile, the daemon under hostile input, killed and restarted, live allowlists, and nothing left
behind by shutdown/kill/clean.

Traffic goes only to loopback servers these tests start and to the Debian mirror the builds use
(deb.debian.org). The private and metadata addresses asked for below are refused by the daemon's
check, and every such test asserts from the daemon's log that no connection was attempted.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from coi_async.incus import IncusClient
from coi_async.incus.models import Profile
from coi_async.orchestration.network import registry
from coi_async.orchestration.network.daemon import read_pid
from tests.coi_cli import COI, coi
from tests.helpers import SHARED_PROJECT_CONFIG, delete_project_fully
from tests.integration.egress.support import (
    METADATA,
    MIRROR,
    PREFIX,
    PRIVATE,
    SECURITY,
    Session,
    assert_nothing_left,
    egress_paths,
    log_records,
    loopback_server,
    negated,
    process_alive,
    refused_before_connect,
    running_session,
    until,
)
from tests.unit.egress_helpers import send_and_read_to_end

pytestmark = pytest.mark.incus

# --- what a session reaches -------------------------------------------------------------------------


def probe_script(port: int, *, private: bool) -> str:
    lines = [
        # 127.0.0.1 inside is the container's own: the host's loopback only through the proxy.
        f"no_proxy= wget -q -O - http://127.0.0.1:{port}/ && echo && echo LOOPBACK-REACHED",
        f"wget -q -O /dev/null {MIRROR} && echo MIRROR-REACHED",
        "echo PROXY=$HTTP_PROXY",
    ]
    if private:
        lines += [
            f"wget -q -O - http://{PRIVATE}/ || echo PRIVATE-REFUSED",
            f"wget -q -O - http://{METADATA}/latest/meta-data/ || echo METADATA-REFUSED",
        ]
    return "\n".join(lines) + "\nexit 0\n"


@pytest.mark.parametrize(
    ("mode", "listed", "loopback", "mirror"),
    [
        ("open", None, True, True),
        ("restricted", None, False, True),
        ("allowlist", ["registry.npmjs.org"], False, False),
        ("allowlist", ["deb.debian.org"], False, True),
    ],
)
async def test_what_a_session_reaches_in_each_mode(
    env: dict[str, str],
    config_file: Path,
    workspace: Path,
    mode: str,
    listed: list[str] | None,
    loopback: bool,
    mirror: bool,
) -> None:
    if listed is not None:
        config_file.write_text(f"[network]\nallowed_domains = {json.dumps(listed)}\n")
    async with loopback_server() as port:
        done = await coi(
            "run",
            "--network",
            mode,
            "--",
            "sh",
            "-c",
            probe_script(port, private=mode != "open"),
            env=env,
            cwd=workspace,
        )
    assert done.code == 0, done.stderr
    out = done.stdout
    assert "PROXY=http://127.0.0.1:3128" in out
    assert ("LOOPBACK-REACHED" in out) is loopback, out
    assert ("loopback-ok" in out) is loopback, out
    assert ("MIRROR-REACHED" in out) is mirror, (out, done.stderr)
    records = await log_records(env)
    if mode == "open":
        assert any(r["host"] == "127.0.0.1" and r["decision"] == "allowed" for r in records), records
        return
    assert "PRIVATE-REFUSED" in out
    assert "METADATA-REFUSED" in out
    assert "403 Forbidden" in done.stderr
    refused_before_connect(
        records, PRIVATE, "private address" if mode == "restricted" else "not in the allowlist"
    )
    refused_before_connect(
        records, METADATA, "cloud metadata address" if mode == "restricted" else "not in the allowlist"
    )
    refused_before_connect(
        records, "127.0.0.1", "loopback" if mode == "restricted" else "not in the allowlist"
    )
    if not mirror:
        refused_before_connect(records, "deb.debian.org", "not in the allowlist")


# --- no NIC, whatever the profile ------------------------------------------------------------------


@asynccontextmanager
async def project_whose_profile_has_a_nic() -> AsyncIterator[str]:
    """A project of its own whose default profile has the default root disk and a NIC on a bridge
    that does not exist (so the NIC could never come up anywhere)."""
    name = f"{PREFIX}nic-{secrets.token_hex(3)}"
    async with IncusClient.connect() as client:
        shared = await client.get_profile("default")
        root = {k: v for k, v in shared.devices.items() if v.get("type") == "disk" and v.get("path") == "/"}
        await client.create_project(
            name, config={**SHARED_PROJECT_CONFIG, "features.profiles": "true"}, description="h11 test"
        )
        try:
            nic = {"type": "nic", "nictype": "bridged", "parent": "h11nobr0", "name": "eth0"}
            await client.in_project(name).update_profile(
                Profile(name="default", devices={**root, "eth0": nic})
            )
            yield name
        finally:
            with anyio.move_on_after(120, shield=True):
                await delete_project_fully(client, name)


async def test_a_restricted_session_has_no_nic_even_when_its_profile_has_one(
    env: dict[str, str], workspace: Path
) -> None:
    async with project_whose_profile_has_a_nic() as project:
        nic_env = {**env, "COI_INCUS_PROJECT": project}
        script = f"ls /sys/class/net; wget -q -O /dev/null {MIRROR} && echo MIRROR-REACHED"
        done = await coi(
            "run", "--network", "restricted", "--", "sh", "-c", script, env=nic_env, cwd=workspace
        )
        assert done.code == 0, done.stderr
        interfaces = done.stdout.split()
        assert "lo" in interfaces
        assert "eth0" not in interfaces
        assert "MIRROR-REACHED" in done.stdout


async def test_hostile_requests_idle_floods_live_lists_and_a_killed_daemon(
    incus: IncusClient, env: dict[str, str], config_file: Path, workspace: Path
) -> None:
    config_file.write_text('[network]\nallowed_domains = ["registry.npmjs.org"]\n')
    async with running_session(env, workspace, "allowlist") as session:
        socket = session.registration.socket
        assert not await session.fetch(MIRROR)  # not listed

        # Hostile heads straight at the session's socket: each refused, the next served.
        hostile = [
            b"GET http://deb.debian.org\x00.evil/ HTTP/1.1\r\n\r\n",
            b"GET http://deb.debian.org/ HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
            b"GET http://deb.debian.org/ HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
            bytes(range(256)) + b"\r\n\r\n",
            b"\r\n\r\n",
        ]
        for request in hostile:
            async with await anyio.connect_unix(socket) as stream:
                reply = await send_and_read_to_end(stream, request)
            assert reply.split(b" ")[1][:1] == b"4", reply[:200]
            async with await anyio.connect_unix(socket) as stream:
                reply = await send_and_read_to_end(stream, b"CONNECT 10.1.1.1:443 HTTP/1.1\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 403"), reply

        # 500 idle connections cannot keep a real request out.
        idle = [await anyio.connect_unix(socket) for _ in range(500)]
        try:
            with anyio.fail_after(30):
                done = await session.inside(f"wget -q -O - http://{PRIVATE}/ 2>&1; echo")
            assert "403" in done.stdout
        finally:
            for stream in idle:
                await stream.aclose()

        # coi network allow / deny, at once.
        allowed = await coi("network", "allow", session.name, "deb.debian.org", env=env)
        assert allowed.code == 0, allowed.stderr
        assert allowed.stdout.strip() == f"Allowed deb.debian.org for {session.name}"
        assert await session.fetch(MIRROR)
        assert (await coi("network", "deny", session.name, "deb.debian.org", env=env)).code == 0
        assert not await session.fetch(MIRROR)
        assert (await coi("network", "allow", session.name, "deb.debian.org", env=env)).code == 0

        # An edit of the config's list reaches the running session within seconds, both ways.
        assert not await session.fetch(SECURITY)
        config_file.write_text('[network]\nallowed_domains = ["registry.npmjs.org", "security.debian.org"]\n')
        await until(lambda: session.fetch(SECURITY), within_s=15, what="the widened list")
        config_file.write_text('[network]\nallowed_domains = ["registry.npmjs.org"]\n')
        await until(lambda: negated(session.fetch(SECURITY)), within_s=15, what="the narrowed list")
        paths = egress_paths(env)

        # The daemon killed mid-session: the next coi command starts it again, egress works.
        pid = read_pid(paths)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: not process_alive(pid), within_s=10, what="the daemon gone")
        assert not await session.fetch(MIRROR)
        listed = await coi("list", env=env)
        assert listed.code == 0, listed.stderr
        assert "Network: allowlist" in listed.stdout
        new_pid = read_pid(paths)
        assert new_pid is not None
        assert new_pid != pid
        assert await session.fetch(MIRROR)

        records = await log_records(env, session.name)
        assert any(r["host"] == "deb.debian.org" and r["decision"] == "allowed" for r in records)
        assert any(r["decision"] == "malformed" for r in records)
        refused_before_connect(records, "10.1.1.1", "not in the allowlist")
    await assert_nothing_left(incus, env, session)


@pytest.mark.parametrize("command", ["shutdown", "kill"])
async def test_shutdown_and_kill_leave_no_socket_device_or_log_handle(
    incus: IncusClient, env: dict[str, str], workspace: Path, command: str
) -> None:
    async with running_session(env, workspace, "restricted") as session:
        follow = await anyio.open_process(
            [COI, "network", "log", session.name, "--follow", "--format", "json"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            await anyio.sleep(1)  # past the records already there
            assert await session.fetch(MIRROR)
            assert follow.stdout is not None
            lines = b""
            with anyio.fail_after(15):
                while not any(b"deb.debian.org" in line for line in lines.split(b"\n")[:-1]):
                    lines += await follow.stdout.receive()
            record = next(json.loads(line) for line in lines.split(b"\n")[:-1] if b"deb.debian.org" in line)
            assert (record["session"], record["decision"]) == (session.name, "allowed")
            assert record["bytes_down"] > 0
        finally:
            follow.kill()
            await follow.aclose()
        done = await coi(command, "--force", session.name, env=env)
        assert done.code == 0, done.stderr
        await assert_nothing_left(incus, env, session)


async def test_clean_leaves_no_socket_device_or_log_handle(
    incus: IncusClient, env: dict[str, str], workspace: Path
) -> None:
    done = await coi(
        "run", "--persistent", "--", "sh", "-c", f"wget -q -O /dev/null {MIRROR}", env=env, cwd=workspace
    )
    assert done.code == 0, done.stderr
    paths = egress_paths(env)
    (registration,) = registry.read_all(paths).values()  # a stopped persistent one stays served
    assert os.path.exists(registration.socket)
    cleaned = await coi("clean", "--force", env=env)
    assert cleaned.code == 0, cleaned.stderr
    session = Session(env, registration)
    await assert_nothing_left(incus, env, session)


async def test_network_commands_refuse_an_unknown_container(env: dict[str, str]) -> None:
    name = f"{PREFIX}no-such-{secrets.token_hex(3)}"
    (await coi("network", "allow", name, "example.org", env=env)).one_error(2, f"unknown container '{name}'")
    (await coi("network", "log", name, env=env)).one_error(2, f"unknown container '{name}'")


async def test_one_daemon_however_many_start_it_and_stop_leaves_nothing(env: dict[str, str]) -> None:
    from coi_async.orchestration.network.daemon import ensure_daemon, ping

    paths = egress_paths(env)
    # ensure_daemon starts `coi egress serve` with this process's environment: the test's own.
    assert os.environ["XDG_RUNTIME_DIR"] == env["XDG_RUNTIME_DIR"]
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(ensure_daemon, paths)
    answer = await ping(paths)
    assert answer is not None
    pid = answer["pid"]
    assert read_pid(paths) == pid
    status = await coi("egress", "status", "--format", "json", env=env)
    assert status.code == 0, status.stderr
    doc = json.loads(status.stdout)
    assert (doc["running"], doc["pid"], doc["sessions"]) == (True, pid, [])
    assert oct(paths.root.stat().st_mode & 0o777) == "0o700"
    again = await anyio.run_process([COI, "egress", "serve"], env=env, check=False)
    assert again.returncode == 1
    assert b"already running" in again.stderr
    stopped = await coi("egress", "stop", env=env)
    assert stopped.stdout.strip() == "Egress daemon stopped"
    assert not process_alive(pid)
    assert not paths.control.exists()
    assert not paths.pid_file.exists()
