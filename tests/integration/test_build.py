"""`build custom` on the real incusd: egress through the proxy, failures, Ctrl-C, bad input."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import msgspec
import pytest

from coi_async.errors import BuildError, NotFoundError
from coi_async.incus import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost
from coi_async.orchestration.events import Event, Note, Output, StepStarted
from coi_async.orchestration.images.build import build_image
from coi_async.orchestration.images.container import NOTE_EGRESS
from coi_async.orchestration.images.request import BuildRequest, BuildResult, BuildStep, custom_request
from coi_async.orchestration.network import registry
from coi_async.orchestration.network.paths import EgressPaths
from tests.coi_cli import coi
from tests.helpers import BUSYBOX_IMAGE, DEBIAN_IMAGE, from_image, remove_instance

pytestmark = pytest.mark.incus

PREFIX = "h6-"
MIRROR_RELEASE = "http://deb.debian.org/debian/dists/bookworm/Release"


class Recorder:
    """A build's events: the phases, the recipe's output, the notes and the proxy's decisions."""

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.out = bytearray()
        self.notes: list[Note] = []
        self.egress: list[tuple[str, str, int]] = []  # (action, host, port)
        self.seen = anyio.Event()
        self.marker = b""

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepStarted):
            self.phases.append(event.step)
        elif isinstance(event, Output):
            self.out += event.data
            if self.marker and self.marker in self.out:
                self.seen.set()
        elif isinstance(event, Note):
            if event.kind == NOTE_EGRESS:
                v = event.values
                self.egress.append((v["action"], v["host"], int(v["port"])))
            else:
                self.notes.append(event)


async def build_leftovers(incus: IncusClient) -> list[str]:
    return [i.name for i in await incus.list_instances() if i.name.startswith(f"{PREFIX}build-")]


async def remove_images(incus: IncusClient, alias: str) -> None:
    """Delete every image this test made: the alias's and its `<alias>-YYYYMMDD-HHMMSS` versions."""
    with anyio.move_on_after(60, shield=True):
        for image in await incus.list_images():
            if any(a == alias or a.startswith(f"{alias}-") for a in image.alias_names):
                with contextlib.suppress(NotFoundError):
                    await incus.delete_image(image.fingerprint)


@pytest.fixture
async def alias(incus: IncusClient, unique: str) -> AsyncIterator[str]:
    """The alias of the image a test builds; its images are removed afterwards."""
    name = f"{PREFIX}{unique}"
    try:
        yield name
    finally:
        await remove_images(incus, name)


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "build.sh"
    path.write_text("#!/bin/sh\nset -e\n" + body)
    return path


async def test_custom_build_installs_a_debian_package_through_the_proxy(
    incus: IncusClient, unique: str, alias: str, tmp_path: Path
) -> None:
    recipe = script(
        tmp_path,
        """
apt-get update -q
apt-get install -y -q --no-install-recommends hello
# Outside the allowlist: the proxy must refuse it (and send nothing anywhere).
if python3 -c "import urllib.request; urllib.request.urlopen('https://github.com/', timeout=20)" 2>/tmp/err; then
    echo "github.com was reachable"; exit 1
fi
cat /tmp/err
grep -q '403 Forbidden' /tmp/err
rm -f /tmp/err
echo custom-built >/etc/h6-marker
test -x /tmp/dummy
""",
    )
    check = f"{PREFIX}{unique}-check"
    rec = Recorder()
    try:
        with anyio.fail_after(600):
            result = await build_image(
                incus, custom_request(alias, recipe, base=DEBIAN_IMAGE, container_prefix=PREFIX), rec
            )
        assert not result.skipped
        assert result.version.startswith(f"{alias}-")
        assert set(result.timings) >= {"base", "launch", "recipe", "publish"}
        assert rec.phases == ["base", "launch", "recipe", "publish"]
        assert ("refused", "github.com", 443) in rec.egress
        assert ("allowed", "deb.debian.org", 80) in rec.egress
        assert b"Hello, world!" not in rec.out  # not run, only installed
        assert await build_leftovers(incus) == []

        image = await incus.find_image(alias)
        assert image is not None
        assert image.fingerprint == result.fingerprint
        assert image.properties["user.coi.recipe"] == result.recipe
        assert (await incus.find_image(result.version)) is not None

        await incus.create_instance(from_image(check, alias))
        hello = await incus.exec(check, ["hello"])
        assert hello.stdout == b"Hello, world!\n"
        marker = await incus.exec(check, ["cat", "/etc/h6-marker"])
        assert marker.stdout == b"custom-built\n"
        # The build's scaffolding is gone from the image.
        leftovers = await incus.exec(
            check, ["ls", "/tmp/coi-build", "/tmp/dummy", "/etc/apt/apt.conf.d/99coi-egress"]
        )
        assert leftovers.exit_code != 0
        assert leftovers.stdout == b""

        # Unchanged recipe: reused.
        again = await build_image(
            incus, custom_request(alias, recipe, base=DEBIAN_IMAGE, container_prefix=PREFIX)
        )
        assert again.skipped
        assert again.fingerprint == result.fingerprint
    finally:
        await remove_instance(incus, check)


async def _tiny_image(incus: IncusClient, alias: str, tmp_path: Path) -> BuildResult:
    first = script(tmp_path, "echo v1 >/etc/h6-version\n")
    return await build_image(incus, custom_request(alias, first, base=BUSYBOX_IMAGE, container_prefix=PREFIX))


async def test_failing_script_shows_its_last_lines_and_keeps_the_previous_image(
    incus: IncusClient, alias: str, tmp_path: Path
) -> None:
    with anyio.fail_after(120):
        before = await _tiny_image(incus, alias, tmp_path)
        failing = tmp_path / "fail.sh"
        failing.write_text("#!/bin/sh\necho line-one\necho line-two >&2\nexit 3\n")
        with pytest.raises(BuildError) as caught:
            await build_image(
                incus,
                custom_request(alias, failing, base=BUSYBOX_IMAGE, force=True, container_prefix=PREFIX),
            )
    message = str(caught.value)
    assert "fail.sh failed with exit code 3" in message
    assert message.endswith("line-one\nline-two")
    assert caught.value.hint is not None
    assert "unchanged" in caught.value.hint
    image = await incus.find_image(alias)
    assert image is not None
    assert image.fingerprint == before.fingerprint
    assert await build_leftovers(incus) == []


async def test_ctrl_c_mid_build_leaves_nothing_behind(incus: IncusClient, alias: str, tmp_path: Path) -> None:
    slow = script(tmp_path, "echo recipe-started\nsleep 600\n")
    rec = Recorder()
    rec.marker = b"recipe-started"
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await build_image(
                    incus, custom_request(alias, slow, base=BUSYBOX_IMAGE, container_prefix=PREFIX), rec
                )

            tg.start_soon(run)
            await rec.seen.wait()
            assert len(await build_leftovers(incus)) == 1
            tg.cancel_scope.cancel()
    assert await build_leftovers(incus) == []
    assert await incus.find_image(alias) is None


async def test_the_build_reaches_the_daemon_on_the_port_asked_for_and_leaves_nothing(
    incus: IncusClient, alias: str, tmp_path: Path
) -> None:
    recipe = script(
        tmp_path,
        f"""test "$http_proxy" = http://127.0.0.1:3999
wget -q -O /dev/null {MIRROR_RELEASE}
""",
    )
    paths = EgressPaths.for_environment()
    rec = Recorder()
    with anyio.fail_after(120):
        result = await build_image(
            incus,
            custom_request(alias, recipe, base=BUSYBOX_IMAGE, proxy_port=3999, container_prefix=PREFIX),
            rec,
        )
    assert not result.skipped
    assert ("allowed", "deb.debian.org", 80) in rec.egress
    assert await build_leftovers(incus) == []
    # The daemon served the build container as it serves a session, and let it go afterwards.
    assert not [r for r in registry.read_all(paths).values() if r.container.startswith(f"{PREFIX}build-")]


async def test_unknown_base_is_refused_before_anything_is_created(incus: IncusClient, tmp_path: Path) -> None:
    request = custom_request(
        "h6-never", script(tmp_path, "true\n"), base="h6-no-such-image", container_prefix=PREFIX
    )
    with pytest.raises(BuildError, match="unknown base image 'h6-no-such-image'"):
        await build_image(incus, request)
    assert await build_leftovers(incus) == []


async def test_cli_missing_script_and_unknown_base(incus_project: str, tmp_path: Path) -> None:
    missing = await coi(
        "build",
        "custom",
        "h6-x",
        "--script",
        str(tmp_path / "nope.sh"),
        project=incus_project,
        COI_CONTAINER_PREFIX=PREFIX,
    )
    assert missing.code == 1
    assert missing.stderr.strip() == f"Error: build script not found: {tmp_path / 'nope.sh'}"
    assert missing.stdout == ""

    ok_script = script(tmp_path, "true\n")
    unknown = await coi(
        "build",
        "custom",
        "h6-x",
        "--script",
        str(ok_script),
        "--base",
        "h6-nope",
        project=incus_project,
        COI_CONTAINER_PREFIX=PREFIX,
    )
    assert unknown.code == 1
    assert "Error: unknown base image 'h6-nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    usage = await coi("build", "custom", "h6-x", project=incus_project, COI_CONTAINER_PREFIX=PREFIX)
    assert usage.code == 2
    assert "--script" in usage.stderr


async def test_cli_custom_build_prints_json(
    incus: IncusClient, incus_project: str, alias: str, tmp_path: Path
) -> None:
    recipe = script(tmp_path, "echo cli >/etc/h6-cli\n")
    args = ("build", "custom", alias, "--script", str(recipe), "--base", BUSYBOX_IMAGE)
    built = await coi(*args, project=incus_project, COI_CONTAINER_PREFIX=PREFIX)
    assert built.code == 0, built.stderr
    assert built.stdout.startswith(f'{{"alias":"{alias}","fingerprint":"')
    assert "Building custom image" in built.stderr
    assert "Build phases: base" in built.stderr
    assert f"==> [base] base image '{BUSYBOX_IMAGE}'\n" in built.stderr
    assert "==> [base] done in " in built.stderr
    assert "==> [launch] build container " in built.stderr
    assert "==> [recipe] build.sh as root\n" in built.stderr
    assert "==> [publish] stop, publish uncompressed, move the alias\n" in built.stderr
    assert f"==> image {alias}-" in built.stderr
    again = await coi(*args, project=incus_project, COI_CONTAINER_PREFIX=PREFIX)
    assert again.code == 0
    assert again.stdout.strip() == f'{{"alias":"{alias}","skipped":true}}'
    assert "Image already exists. Use --force to rebuild." in again.stderr


async def test_a_build_of_steps_keeps_each_and_runs_only_what_changed(
    incus: IncusClient, unique: str, alias: str, tmp_path: Path
) -> None:
    prefix = f"{PREFIX}{unique[:6]}-"
    (tmp_path / "one.sh").write_text("#!/bin/sh\nset -e\necho one >> /steps\n")
    (tmp_path / "two.sh").write_text("#!/bin/sh\nset -e\necho two >> /steps\n")
    (tmp_path / "broken.sh").write_text("#!/bin/sh\necho going wrong\nexit 3\n")

    def request(second: str, env: dict[str, str] | None = None) -> BuildRequest:
        steps = (
            BuildStep(name="one", script=tmp_path / "one.sh"),
            BuildStep(name="two", script=tmp_path / second, env=env or {}),
        )
        return BuildRequest(alias=alias, steps=steps, base=BUSYBOX_IMAGE, container_prefix=prefix)

    async def steps_in(fingerprint: str) -> bytes:
        name = f"{prefix}check-{secrets.token_hex(2)}"
        await incus.create_instance(
            InstancesPost(name=name, source=InstanceSource(type="image", fingerprint=fingerprint), start=True)
        )
        try:
            return (await incus.exec(name, ["cat", "/steps"])).stdout
        finally:
            await remove_instance(incus, name)

    async def layers() -> list[str]:
        return sorted(i.name for i in await incus.list_instances() if i.name.startswith(f"{prefix}layer-"))

    try:
        with anyio.fail_after(300):
            first = await build_image(incus, request("two.sh"))
            assert first.reused == ()
            assert await steps_in(first.fingerprint) == b"one\ntwo\n"
            assert len(await layers()) == 2

            # The second step changes: the first one's layer is used as it is.
            rec = Recorder()
            second = await build_image(incus, request("two.sh", {"AGAIN": "1"}), rec)
            assert second.reused == ("one",)
            assert rec.phases == ["base", "launch", "recipe", "publish"]  # one step run
            assert await steps_in(second.fingerprint) == b"one\ntwo\n"  # "one" ran once

            # A step that fails leaves the image and the layers under it as they were.
            with pytest.raises(BuildError, match=r"broken\.sh failed with exit code 3"):
                await build_image(incus, request("broken.sh"))
            image = await incus.find_image(alias)
            assert image is not None
            assert image.fingerprint == second.fingerprint
            assert await build_leftovers(incus) == []

            # Forced: every step runs again.
            forced = await build_image(incus, msgspec.structs.replace(request("two.sh"), force=True))
            assert forced.reused == ()
            assert await steps_in(forced.fingerprint) == b"one\ntwo\n"
    finally:
        with anyio.move_on_after(60, shield=True):
            for name in await layers():
                await remove_instance(incus, name)
