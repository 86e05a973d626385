"""A base image built from Debian packages on the host: debootstrap, a setup script in chroot, import.

This is how coi builds images where no remote image server is reachable: the host needs only
debootstrap, tar and a Debian mirror (or a local one). The result is imported as a local image
whose property user.coi.recipe is the hash of the shipped base recipe, so it is built once.

Progress goes out as events (the item is the base's alias): the host tools' output as `Output`,
the rest as `Note`s of the `NOTE_*` kinds below, which the CLI words.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from coi_async.errors import BuildError, CoiError
from coi_async.incus.client import IncusClient
from coi_async.orchestration import events
from coi_async.orchestration.events import Emit, Output, note
from coi_async.recipes import BASE_DIR, files_hash

OutputSink = Callable[[bytes], None]

# `Note.kind`s of the base build, with their values.
NOTE_BASE_UP_TO_DATE = "base-up-to-date"  # alias, fingerprint
NOTE_BASE_BUILDING = "base-building"  # alias, suite, mirror
NOTE_BASE_STEP_TOOK = "base-step-took"  # step ("debootstrap"), seconds
NOTE_BASE_IMPORTING = "base-importing"  # alias, size (bytes)

# Bumped when this module changes what it puts into the image.
_BUILDER_VERSION = "1"
_DEFAULT_CACHE = Path("/var/cache/coi-async")

_ARCHITECTURES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}

_METADATA = """\
architecture: {arch}
creation_date: {date}
properties:
  os: debian
  release: {suite}
  variant: {variant}
  description: coi base, Debian {suite} {variant}
  user.coi.image: {alias}
  user.coi.recipe: "{recipe}"
templates:
  /etc/hostname:
    when: [create, copy]
    create_only: false
    template: hostname.tpl
  /etc/hosts:
    when: [create, copy]
    create_only: false
    template: hosts.tpl
"""
_HOSTNAME_TPL = "{{ container.name }}\n"
_HOSTS_TPL = (
    "127.0.0.1\tlocalhost\n127.0.1.1\t{{ container.name }}\n\n::1\tlocalhost ip6-localhost ip6-loopback\n"
)


class BaseRecipe(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    alias: str
    suite: str
    mirror: str
    variant: str
    packages: list[str]

    @property
    def hash(self) -> str:
        return files_hash(BASE_DIR, extra=(_BUILDER_VERSION,))


def load_base_recipe() -> BaseRecipe:
    text = (BASE_DIR / "base.toml").read_text()
    return msgspec.convert(tomllib.loads(text), BaseRecipe)


async def ensure_debian_base(
    incus: IncusClient,
    *,
    emit: Emit = events.ignore,
    cache_dir: Path = _DEFAULT_CACHE,
    force: bool = False,
) -> str:
    """The fingerprint of the Debian base image: the cached one if its recipe is unchanged, else new."""
    recipe = load_base_recipe()
    item = recipe.alias
    image = await incus.find_image(recipe.alias)
    if image is not None and not force and image.properties.get("user.coi.recipe") == recipe.hash:
        note(emit, NOTE_BASE_UP_TO_DATE, item, alias=recipe.alias, fingerprint=image.fingerprint)
        return image.fingerprint
    if os.geteuid() != 0:
        raise BuildError(
            f"no base image {recipe.alias} yet, and building it from Debian packages needs root (debootstrap)",
            hint="run `sudo coi build` once, or pass --base with a local image alias",
        )
    if shutil.which("debootstrap") is None:
        raise BuildError(
            "debootstrap is not installed; it builds the base image from Debian packages",
            hint="apt-get install debootstrap, or pass --base with a local image alias",
        )
    note(emit, NOTE_BASE_BUILDING, item, alias=recipe.alias, suite=recipe.suite, mirror=recipe.mirror)

    def on_output(data: bytes) -> None:
        emit(Output(item=item, data=data))

    work = Path(tempfile.mkdtemp(prefix="coi-base-", dir="/var/tmp"))
    try:
        tarball = await _build_tarball(recipe, work, cache_dir=cache_dir, on_output=on_output, emit=emit)
        note(emit, NOTE_BASE_IMPORTING, item, alias=recipe.alias, size=str(tarball.stat().st_size))
        fingerprint = await incus.import_image(tarball)
        await incus.point_image_alias(recipe.alias, fingerprint, description="coi base image")
    finally:
        with anyio.move_on_after(60, shield=True):
            await anyio.to_thread.run_sync(_remove_work_dir, work)
    if image is not None and image.fingerprint != fingerprint:
        with contextlib.suppress(CoiError):
            await incus.delete_image(image.fingerprint)
    return fingerprint


async def _build_tarball(
    recipe: BaseRecipe,
    work: Path,
    *,
    cache_dir: Path,
    on_output: OutputSink,
    emit: Emit,
) -> Path:
    rootfs = work / "rootfs"
    rootfs.mkdir()
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    await run_host_command(
        [
            "debootstrap",
            f"--variant={recipe.variant}",
            f"--include={','.join(recipe.packages)}",
            "--components=main",
            f"--cache-dir={debs}",
            recipe.suite,
            str(rootfs),
            recipe.mirror,
        ],
        on_output=on_output,
        what="debootstrap",
    )
    note(
        emit,
        NOTE_BASE_STEP_TOOK,
        recipe.alias,
        step="debootstrap",
        seconds=f"{time.monotonic() - started:.3f}",
    )
    shutil.copy2(BASE_DIR / "setup.sh", rootfs / "coi-setup.sh")
    await run_host_command(
        [
            "chroot",
            str(rootfs),
            "/usr/bin/env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL=C",
            f"SUITE={recipe.suite}",
            f"MIRROR={recipe.mirror}",
            "/bin/sh",
            "/coi-setup.sh",
        ],
        on_output=on_output,
        what="base setup",
    )
    (rootfs / "coi-setup.sh").unlink()
    shutil.rmtree(rootfs / "debootstrap", ignore_errors=True)
    await anyio.to_thread.run_sync(_unmount_below, work)
    templates = work / "templates"
    templates.mkdir()
    (templates / "hostname.tpl").write_text(_HOSTNAME_TPL)
    (templates / "hosts.tpl").write_text(_HOSTS_TPL)
    machine = platform.machine()
    (work / "metadata.yaml").write_text(
        _METADATA.format(
            arch=_ARCHITECTURES.get(machine, machine),
            date=int(time.time()),
            suite=recipe.suite,
            variant=recipe.variant,
            alias=recipe.alias,
            recipe=recipe.hash,
        )
    )
    tarball = work / "image.tar"
    # Uncompressed: it is imported right away from local disk, so packing it would only cost time.
    await run_host_command(
        [
            "tar",
            "-c",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-f",
            str(tarball),
            "-C",
            str(work),
            "metadata.yaml",
            "templates",
            "rootfs",
        ],
        on_output=on_output,
        what="packing the base image",
    )
    return tarball


async def run_host_command(command: list[str], *, on_output: OutputSink, what: str) -> None:
    """Run a host tool in its own process group, streaming its output; kill the group on cancel."""
    tail = bytearray()
    process = await anyio.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        async for chunk in process.stdout:
            on_output(chunk)
            tail += chunk
            del tail[:-4096]
        code = await process.wait()
    finally:
        if process.returncode is None:
            with anyio.move_on_after(10, shield=True):
                await _kill_group(process)
    if code != 0:
        last = b"\n".join(bytes(tail).splitlines()[-15:]).decode(errors="replace")
        raise BuildError(f"{what} failed with exit code {code}; its last lines:\n{last}")


async def _kill_group(process: anyio.abc.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with anyio.move_on_after(5):
        await process.wait()
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def _mounts_below(path: Path) -> list[str]:
    prefix = f"{path}/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


def _unmount_below(path: Path) -> None:
    # debootstrap mounts /proc and /sys in its target and may leave them after a failure.
    for point in _mounts_below(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _remove_work_dir(work: Path) -> None:
    _unmount_below(work)
    if _mounts_below(work):
        return  # never delete through a live mount; leave it for a person to look at
    shutil.rmtree(work, ignore_errors=True)
