"""`coi image ...` and `coi images` end to end. Images live in the default project (the test project
shares them), so every image made here has an alias starting with `h5-` and is removed after."""

from __future__ import annotations

import contextlib
import json
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from tests.coi_cli import coi
from tests.helpers import busybox, remove_instance

pytestmark = pytest.mark.incus


@pytest.fixture
async def images_made(incus: IncusClient) -> AsyncIterator[list[str]]:
    """Aliases whose images the test made; every one is deleted at the end."""
    aliases: list[str] = []
    try:
        yield aliases
    finally:
        with anyio.move_on_after(60, shield=True):
            for alias in aliases:
                assert alias.startswith("h5-")
                with contextlib.suppress(CoiError):
                    image = await incus.find_image(alias)
                    if image is not None:
                        await incus.delete_image(image.fingerprint)


async def test_publish_list_exists_delete(
    incus: IncusClient, incus_project: str, unique: str, images_made: list[str]
) -> None:
    name, alias = f"h5-{unique}-pub", f"h5-{unique}-img"
    images_made.append(alias)
    await incus.create_instance(busybox(name))
    try:
        published = await coi(
            "image", "publish", name, alias, "--description", "h5 test", project=incus_project
        )
        assert published.code == 0, published.stderr
        answer = json.loads(published.stdout)
        assert list(answer) == ["alias", "fingerprint"]
        assert answer["alias"] == alias
        assert not await incus.instance_exists(name)  # publish consumes the container
        image = await incus.find_image(alias)
        assert image is not None
        assert image.fingerprint == answer["fingerprint"]
        assert image.properties["description"] == "h5 test"

        assert (await coi("image", "exists", alias, project=incus_project)).code == 0
        assert (await coi("image", "exists", f"h5-{unique}-none", project=incus_project)).code == 1

        listed = await coi(
            "image", "list", "--prefix", f"h5-{unique}", "--format", "json", project=incus_project
        )
        assert json.loads(listed.stdout) == [
            {
                "fingerprint": image.fingerprint,
                "aliases": [alias],
                "size": image.size,
                "created_at": image.created_at,
            }
        ]
        table = await coi("image", "list", "--prefix", f"h5-{unique}", project=incus_project)
        lines = table.stdout.splitlines()
        assert lines[0] == f"Images with prefix 'h5-{unique}':"
        assert lines[1].split() == ["ALIAS", "SIZE", "CREATED"]
        assert lines[2] == "-" * 80
        assert lines[3].split()[0] == alias
        assert lines[3].split()[1].endswith("B")
        none = await coi("image", "list", "--prefix", f"h5-{unique}-zzz", project=incus_project)
        assert none.stdout == f"No images found with prefix 'h5-{unique}-zzz'\n"
        empty = await coi(
            "image", "list", "--prefix", f"h5-{unique}-zzz", "--format", "json", project=incus_project
        )
        assert empty.stdout == "[]\n"  # the reference printed null

        everything = json.loads(
            (await coi("image", "list", "--format", "json", project=incus_project)).stdout
        )
        assert image.fingerprint in [e["fingerprint"] for e in everything]
        overview = await coi("image", "list", "--all", project=incus_project)
        assert "All Local Images:" in overview.stdout
        assert alias in overview.stdout
        legacy = await coi("images", "-a", project=incus_project)
        assert legacy.code == 0
        assert alias in legacy.stdout
        short = await coi("images", project=incus_project)
        assert "Tip: Use --all to see all local images" in short.stdout

        # A taken alias is refused before the container is touched.
        await incus.create_instance(busybox(name))
        again = await coi("image", "publish", name, alias, project=incus_project)
        again.one_error(1, f"image alias '{alias}' already exists")
        assert (await incus.get_instance(name)).running

        deleted = await coi("image", "delete", alias, project=incus_project)
        assert (deleted.code, deleted.stderr) == (0, f"Image {alias} deleted\n")
        assert await incus.find_image(alias) is None
        (await coi("image", "delete", alias, project=incus_project)).one_error(
            1, f"image '{alias}' not found"
        )
        missing = await coi("image", "publish", f"h5-{unique}-ghost", alias, project=incus_project)
        missing.one_error(1, f"container 'h5-{unique}-ghost' not found")
        assert await incus.find_image(alias) is None
    finally:
        await remove_instance(incus, name)


def tiny_image(tmp_path: Path, tag: str) -> Path:
    work = tmp_path / tag
    (work / "rootfs" / "bin").mkdir(parents=True)
    (work / "rootfs" / "bin" / "tag").write_text(tag)  # a distinct fingerprint per image
    (work / "metadata.yaml").write_text(f"architecture: x86_64\ncreation_date: {int(time.time())}\n")
    tarball = tmp_path / f"{tag}.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(work / "metadata.yaml", arcname="metadata.yaml")
        tar.add(work / "rootfs", arcname="rootfs")
    return tarball


async def test_cleanup_keeps_the_newest_versions(
    incus: IncusClient, incus_project: str, unique: str, images_made: list[str], tmp_path: Path
) -> None:
    base = f"h5-{unique}-v"
    stamps = ["20260101-090000", "20251231-235959", "20260102-000000", "20250601-120000"]
    fingerprints = {}
    for stamp in stamps:
        alias = f"{base}-{stamp}"
        images_made.append(alias)
        fingerprints[stamp] = await incus.import_image(tiny_image(tmp_path, stamp), aliases=[alias])
    # Not a version: never a candidate. And an old version another alias still names is kept.
    images_made += [f"{base}-latest", f"h5-{unique}-pinned"]
    await incus.import_image(tiny_image(tmp_path, "latest"), aliases=[f"{base}-latest"])
    await incus.point_image_alias(f"h5-{unique}-pinned", fingerprints["20250601-120000"])

    (await coi("image", "cleanup", base, "--keep", "0", project=incus_project)).one_error(
        2, "--keep must be > 0"
    )
    (await coi("image", "cleanup", base, project=incus_project)).one_error(2, "Missing option '--keep'")
    (await coi("image", "cleanup", "--keep", "2", project=incus_project)).one_error(
        2, "Missing argument 'PREFIX'"
    )
    assert len([i for i in await incus.list_images() if any(a.startswith(base) for a in i.alias_names)]) == 5

    run = await coi("image", "cleanup", f"{base}-", "--keep", "2", project=incus_project)
    assert run.code == 0, run.stderr
    fp = {stamp: f[:12] for stamp, f in fingerprints.items()}
    assert run.stderr.splitlines() == [
        "Cleanup complete:",
        "",
        "Deleted 1 old version(s):",
        f"  - {base}-20251231-235959 ({fp['20251231-235959']})",
        "",
        "Kept 3 recent version(s):",
        f"  - {base}-20260102-000000 ({fp['20260102-000000']})",
        f"  - {base}-20260101-090000 ({fp['20260101-090000']})",
        f"  - {base}-20250601-120000 ({fp['20250601-120000']})",
    ]
    left = {a for i in await incus.list_images() for a in i.alias_names if a.startswith(f"h5-{unique}")}
    assert left == {
        f"{base}-20260102-000000",
        f"{base}-20260101-090000",
        f"{base}-20250601-120000",
        f"h5-{unique}-pinned",
        f"{base}-latest",
    }
    nothing = await coi("image", "cleanup", f"h5-{unique}-none-", "--keep", "1", project=incus_project)
    assert nothing.stderr.splitlines() == [
        "Cleanup complete:",
        "",
        f"No versions found with prefix 'h5-{unique}-none-'",
    ]


async def test_image_usage_errors(incus_project: str) -> None:
    (await coi("image", "list", "--format", "yaml", project=incus_project)).one_error(
        2, "'yaml' is not one of"
    )
    (await coi("image", "publish", "onlyone", project=incus_project)).one_error(2, "Missing argument 'ALIAS'")
    (await coi("image", "delete", project=incus_project)).one_error(2, "Missing argument 'ALIAS'")
    (await coi("image", "exists", project=incus_project)).one_error(2, "Missing argument 'ALIAS'")
    (await coi("images", "--prefix", "x", project=incus_project)).one_error(2, "No such option '--prefix'")
