"""The full `coi` image: built at most once per machine (reused while its recipe is unchanged), then checked.

The build itself is `coi build`'s code path (base from Debian packages, recipe through the egress
proxy); scripts/bootstrap usually built it already, and then this only checks the recipe hash.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest

from coi_async.incus import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost
from coi_async.orchestration.images.build import build_image
from coi_async.orchestration.images.request import coi_request
from tests.helpers import remove_instance

pytestmark = pytest.mark.incus

NESTING = {
    "security.nesting": "true",
    "security.syscalls.intercept.mknod": "true",
    "security.syscalls.intercept.setxattr": "true",
}
# No bridge and no iptables: the container has no network interface to bridge to.
DAEMON_JSON = b'{"bridge": "none", "iptables": false, "storage-driver": "overlay2"}\n'
BUSYBOX = Path("/bin/busybox")


async def run_ok(incus: IncusClient, name: str, command: list[str], *, as_code: bool = False) -> str:
    user = {"user": 1000, "group": 1000, "env": {"HOME": "/home/code"}} if as_code else {}
    result = await incus.exec(name, command, **user)  # type: ignore[arg-type]
    assert result.exit_code == 0, (command, result.stdout, result.stderr)
    return result.stdout.decode()


@pytest.mark.timeout(3600)
async def test_coi_image_has_the_tools_and_runs_docker(incus: IncusClient, unique: str) -> None:
    with anyio.fail_after(3300):
        result = await build_image(incus, coi_request(container_prefix="h6-"))
    image = await incus.find_image("coi")
    assert image is not None
    assert image.fingerprint == result.fingerprint
    assert image.properties["user.coi.recipe"] == result.recipe

    name = f"h6-{unique}-coi"
    try:
        await incus.create_instance(
            InstancesPost(
                name=name, source=InstanceSource(type="image", alias="coi"), start=True, config=NESTING
            )
        )
        # With the nesting settings, an exec in the first second or two after start can end with
        # exit code -1 and no output (LXC attach racing the boot): retry until systemd answers.
        with anyio.fail_after(120):
            while True:
                boot = await incus.exec(name, ["systemctl", "is-system-running", "--wait"])
                if boot.stdout.strip() in (b"running", b"degraded"):
                    break
                await anyio.sleep(0.5)
        for tool in ("claude", "node", "docker", "gh", "dummy"):
            assert (await run_ok(incus, name, [tool, "--version"], as_code=True)).strip()
        ident = await run_ok(incus, name, ["id", "code"])
        assert ident.startswith("uid=1000(code) gid=1000(code)")
        assert "(docker)" in ident
        assert "(sudo)" in ident
        assert await run_ok(incus, name, ["sudo", "-n", "id", "-u"], as_code=True) == "0\n"
        assert await run_ok(
            incus,
            name,
            ["sh", "-c", "for c in poweroff shutdown reboot; do command -v $c; done"],
            as_code=True,
        ) == ("/usr/local/bin/poweroff\n/usr/local/bin/shutdown\n/usr/local/bin/reboot\n")
        for tool in ("tmux", "git", "python3", "jq", "curl", "gcc", "make"):
            await run_ok(incus, name, ["sh", "-c", f"command -v {tool}"])

        # Docker in the container: dockerd starts, and a locally imported image runs without a network.
        await incus.push_file(name, "/etc/docker/daemon.json", DAEMON_JSON)
        await run_ok(incus, name, ["systemctl", "restart", "docker"])
        with anyio.fail_after(60):
            while True:
                if (await incus.exec(name, ["docker", "info"])).ok:
                    break
                await anyio.sleep(1)
        await incus.exec(name, ["mkdir", "-p", "/tmp/img"])
        await incus.push_file_from(name, "/tmp/img/busybox", BUSYBOX, mode=0o755)
        # Through su: incus exec sets no supplementary groups; a login as code has the docker group.
        await run_ok(incus, name, ["su", "code", "-c", "tar -C /tmp/img -c . | docker import - h6-local:1"])
        run = "docker run --rm --network none h6-local:1 /busybox echo hello from docker"
        out = await run_ok(incus, name, ["su", "code", "-c", run])
        assert out == "hello from docker\n"
    finally:
        await remove_instance(incus, name)


@pytest.mark.timeout(3600)
async def test_an_image_with_every_tool_has_each_answering_its_version(
    incus: IncusClient, unique: str
) -> None:
    # Its own alias, so the `coi` image the machine uses stays as it is; reused while unchanged.
    request = msgspec.structs.replace(
        coi_request(tools=["claude", "codex", "gemini", "opencode"], container_prefix="h16-"),
        alias="coi-test-all-tools",
    )
    with anyio.fail_after(3300):
        result = await build_image(incus, request)
    image = await incus.find_image(request.alias)
    assert image is not None
    assert image.properties["user.coi.tools"] == "claude,codex,gemini,opencode"

    name = f"h16-{unique}-tools"
    try:
        await incus.create_instance(
            InstancesPost(
                name=name, source=InstanceSource(type="image", fingerprint=result.fingerprint), start=True
            )
        )
        for tool in ("claude", "codex", "gemini", "opencode"):
            assert (await run_ok(incus, name, [tool, "--version"], as_code=True)).strip(), tool
    finally:
        await remove_instance(incus, name)
