"""The extraction routine on crafted archives: what lands, what is left out, what is refused."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from coi_async.config import resolve_config
from coi_async.config.model import Limits
from coi_async.errors import ArchiveError, ArchiveLimitError, ConfigError
from coi_async.incus.tarstream import run_stoppable
from coi_async.orchestration.files.limits import copy_caps
from coi_async.untar import Caps, extract, normalise
from tests.tar_payloads import (
    PATH_MAX_CHAIN_SKIPPED,
    Build,
    add_entry,
    add_file,
    path_max_chain,
    sparse_member,
    tar_bytes,
)

CAPS = Caps(max_members=1000, max_file_bytes=1 << 20, max_total_bytes=4 << 20)


def archive(tmp_path: Path, build: Build, *, fmt: int = tarfile.GNU_FORMAT) -> Path:
    path = tmp_path / "in.tar"
    path.write_bytes(tar_bytes(build, fmt=fmt))
    return path


def tree(root: Path) -> dict[str, str]:
    """Every path below `root` and what it is (file content, link target or "dir")."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = path.read_text(errors="replace")
    return found


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A directory beside the destination that nothing may touch."""
    path = tmp_path / "canary"
    path.mkdir()
    (path / "keep").write_text("keep")
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "a" / "b" / "dest"
    path.mkdir(parents=True)
    return path


def unpack(source: Path, dest: Path, caps: Caps = CAPS) -> list[str]:
    with open(source, "rb") as fh:
        return extract(fh, str(dest), caps).skipped


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_a_real_tree_comes_through_whole(tmp_path: Path, dest: Path, fmt: int) -> None:
    long = "d" * 60 + "/" + "n" * 30  # beyond 100 characters in GNU and PAX; a prefix in ustar

    def build(tar: tarfile.TarFile) -> None:
        add_entry(tar, "./", tarfile.DIRTYPE, mode=0o700)
        add_entry(tar, "./projects", tarfile.DIRTYPE, mode=0o555)
        add_file(tar, "./projects/conv.jsonl", b"line\n", mode=0o600)
        add_file(tar, "./settings.json", b"{}", mode=0o644)
        add_entry(tar, "./link", tarfile.SYMTYPE, link="projects/conv.jsonl")
        add_entry(tar, "./up", tarfile.SYMTYPE, link="projects/../settings.json")
        add_entry(tar, "./hard", tarfile.LNKTYPE, link="./settings.json")
        add_entry(tar, f"./{long}", tarfile.DIRTYPE)
        add_file(tar, f"./{long}/f", b"deep")

    skipped = unpack(archive(tmp_path, build, fmt=fmt), dest)

    assert skipped == []
    assert tree(dest) == {
        "d" * 60: "dir",
        long: "dir",
        f"{long}/f": "deep",
        "hard": "{}",
        "link": "-> projects/conv.jsonl",
        "projects": "dir",
        "projects/conv.jsonl": "line\n",
        "settings.json": "{}",
        "up": "-> projects/../settings.json",
    }
    assert os.stat(dest / "hard").st_ino == os.stat(dest / "settings.json").st_ino
    assert stat.S_IMODE(os.stat(dest / "projects/conv.jsonl").st_mode) == 0o600
    # Directories stay writable by their owner, so the copy can be replaced later.
    assert stat.S_IMODE(os.stat(dest / "projects").st_mode) == 0o755
    assert os.stat(dest / "settings.json").st_mtime == 1_600_000_000


def test_names_that_are_absolute_or_climb_are_left_out(tmp_path: Path, dest: Path, canary: Path) -> None:
    def build(tar: tarfile.TarFile) -> None:
        add_file(tar, "../../../canary/keep", b"owned")
        add_file(tar, "a/../../x", b"owned")
        add_file(tar, str(canary / "new"), b"owned")
        add_file(tar, "ok", b"fine")

    skipped = unpack(archive(tmp_path, build), dest)

    assert sorted(skipped) == sorted(["../../../canary/keep", "a/../../x", str(canary / "new")])
    assert tree(dest) == {"ok": "fine"}
    assert tree(canary) == {"keep": "keep"}


def test_links_that_leave_are_left_out_however_they_are_chained(
    tmp_path: Path, dest: Path, canary: Path
) -> None:
    def build(tar: tarfile.TarFile) -> None:
        add_entry(tar, "abs", tarfile.SYMTYPE, link=str(canary))
        add_entry(tar, "climb", tarfile.SYMTYPE, link="../../../canary")
        add_entry(tar, "sub", tarfile.DIRTYPE)
        add_entry(tar, "sub/up", tarfile.SYMTYPE, link="..")  # the root: inside
        add_entry(tar, "via", tarfile.SYMTYPE, link="sub/up/..")  # through a link, then up: outside
        add_entry(tar, "loop1", tarfile.SYMTYPE, link="loop2")
        add_entry(tar, "loop2", tarfile.SYMTYPE, link="loop1")
        add_entry(tar, "dangling", tarfile.SYMTYPE, link="not/there")
        add_entry(tar, "late", tarfile.SYMTYPE, link="escape/..")
        add_entry(tar, "escape", tarfile.SYMTYPE, link="../..")  # after `late`: the whole set counts
        add_file(tar, "abs/inside-after-all", b"x")  # `abs` is then a real directory here

    skipped = unpack(archive(tmp_path, build), dest)

    assert sorted(skipped) == ["abs", "climb", "escape", "late", "loop1", "loop2", "via"]
    assert tree(dest) == {
        "abs": "dir",
        "abs/inside-after-all": "x",
        "dangling": "-> not/there",
        "sub": "dir",
        "sub/up": "-> ..",
    }
    assert tree(canary) == {"keep": "keep"}


def test_a_chain_longer_than_path_max_does_not_escape(tmp_path: Path, dest: Path, canary: Path) -> None:
    """The tarfile filter bypass (CVE-2025-4517): realpath gives up past PATH_MAX."""
    skipped = unpack(archive(tmp_path, lambda tar: path_max_chain(tar, str(canary))), dest)

    assert PATH_MAX_CHAIN_SKIPPED <= set(skipped)
    assert tree(canary) == {"keep": "keep"}
    assert (dest / "escape").is_dir()
    assert not (dest / "escape").is_symlink()
    assert (dest / "escape" / "pwned").read_text() == "owned"
    assert (dest / "escape-file").read_text() == "owned"
    assert not any(p.is_symlink() and "canary" in os.readlink(p) for p in dest.rglob("*"))


def test_hardlinks_only_to_files_of_the_archive(tmp_path: Path, dest: Path, canary: Path) -> None:
    def build(tar: tarfile.TarFile) -> None:
        add_entry(tar, "missing", tarfile.LNKTYPE, link="not-in-archive")
        add_entry(tar, "outside", tarfile.LNKTYPE, link=str(canary / "keep"))
        add_entry(tar, "climb", tarfile.LNKTYPE, link="../../../canary/keep")
        add_entry(tar, "sym", tarfile.SYMTYPE, link="f")
        add_entry(tar, "to-link", tarfile.LNKTYPE, link="sym")
        add_entry(tar, "early", tarfile.LNKTYPE, link="f")  # before its target
        add_file(tar, "f", b"data")
        add_entry(tar, "self", tarfile.LNKTYPE, link="self")
        add_entry(tar, "good", tarfile.LNKTYPE, link="f")

    skipped = unpack(archive(tmp_path, build), dest)

    assert sorted(skipped) == ["climb", "early", "missing", "outside", "self", "to-link"]
    assert tree(dest) == {"f": "data", "good": "data", "sym": "-> f"}
    assert tree(canary) == {"keep": "keep"}


def test_special_files_are_left_out(tmp_path: Path, dest: Path) -> None:
    def build(tar: tarfile.TarFile) -> None:
        for name, kind in (("chr", tarfile.CHRTYPE), ("blk", tarfile.BLKTYPE), ("fifo", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.devmajor, info.devminor = kind, 1, 3
            tar.addfile(info)
        add_file(tar, "ok")

    assert sorted(unpack(archive(tmp_path, build), dest)) == ["blk", "chr", "fifo"]
    assert tree(dest) == {"ok": "x"}


def test_set_id_bits_and_group_write_are_dropped(tmp_path: Path, dest: Path) -> None:
    def build(tar: tarfile.TarFile) -> None:
        add_file(tar, "suid", b"#!/bin/sh\n", mode=0o6777)
        add_entry(tar, "sticky", tarfile.DIRTYPE, mode=0o1777)

    assert unpack(archive(tmp_path, build), dest) == []
    assert stat.S_IMODE(os.stat(dest / "suid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dest / "sticky").st_mode) == 0o755


def test_a_later_member_replaces_an_earlier_one_not_its_hardlinks(tmp_path: Path, dest: Path) -> None:
    def build(tar: tarfile.TarFile) -> None:
        add_file(tar, "f", b"one")
        add_entry(tar, "h", tarfile.LNKTYPE, link="f")
        add_file(tar, "f", b"two")
        add_file(tar, "d/x", b"in d")
        add_file(tar, "d", b"a file over a directory")

    assert unpack(archive(tmp_path, build), dest) == ["d"]
    assert tree(dest) == {"d": "dir", "d/x": "in d", "f": "two", "h": "one"}


def test_a_huge_sparse_member_fails_on_its_real_size(tmp_path: Path, dest: Path) -> None:
    source = archive(tmp_path, lambda tar: sparse_member(tar, 10 << 30), fmt=tarfile.PAX_FORMAT)
    assert source.stat().st_size <= 10240  # one tar record
    with pytest.raises(ArchiveLimitError, match="big is larger than 1 MiB") as caught:
        unpack(source, dest)
    assert caught.value.cap == "max_file_bytes"
    assert os.listdir(dest) == []


def test_a_small_sparse_member_is_left_out(tmp_path: Path, dest: Path) -> None:
    source = archive(tmp_path, lambda tar: sparse_member(tar, 4096), fmt=tarfile.PAX_FORMAT)
    assert unpack(source, dest) == ["big"]
    assert os.listdir(dest) == []


@pytest.mark.parametrize(
    ("caps", "cap", "message"),
    [
        (
            Caps(max_members=50, max_file_bytes=1 << 20, max_total_bytes=1 << 30),
            "max_members",
            "more than 50",
        ),
        (Caps(max_members=1000, max_file_bytes=1 << 20, max_total_bytes=100), "max_total_bytes", "in all"),
    ],
)
def test_caps_fail_before_anything_is_written(
    tmp_path: Path, dest: Path, caps: Caps, cap: str, message: str
) -> None:
    def build(tar: tarfile.TarFile) -> None:
        for i in range(60):
            add_file(tar, f"f{i}", b"0123456789")

    with pytest.raises(ArchiveLimitError, match=message) as caught:
        unpack(archive(tmp_path, build), dest, caps)
    assert caught.value.cap == cap
    assert os.listdir(dest) == []


def test_a_million_tiny_members_are_refused_by_count(tmp_path: Path, dest: Path) -> None:
    one = io.BytesIO()
    with tarfile.open(fileobj=one, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_file(tar, "f", b"")
    header = one.getvalue()[:512]
    source = tmp_path / "many.tar"
    with open(source, "wb") as fh:
        # A million members, the same empty file each time.
        fh.writelines(header * 1000 for _ in range(1000))
    with pytest.raises(ArchiveLimitError, match="more than 1000 entries"):
        unpack(source, dest)
    assert os.listdir(dest) == []


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: os.urandom(4096), id="noise"),
        pytest.param(lambda data: data[:100] + b"X" + data[101:], id="bad-checksum"),
        pytest.param(lambda data: data[:700], id="truncated-data"),
        pytest.param(lambda data: data[:300], id="truncated-header"),
    ],
)
def test_a_malformed_stream_is_an_archive_error(
    tmp_path: Path, dest: Path, damage: Callable[[bytes], bytes]
) -> None:
    source = archive(tmp_path, lambda tar: add_file(tar, "f", b"y" * 2000))
    source.write_bytes(damage(source.read_bytes()))
    with pytest.raises(ArchiveError):
        unpack(source, dest)


def test_a_broken_pax_header_is_an_archive_error(tmp_path: Path, dest: Path) -> None:
    def build(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"path": "f"}
        tar.addfile(info)

    source = archive(tmp_path, build, fmt=tarfile.PAX_FORMAT)
    data = source.read_bytes()
    assert b"9 path=f\n" in data
    data = data.replace(b"9 path=f\n", b"8 path=f\n")  # a record length that misses its end
    source.write_bytes(data)
    with pytest.raises(ArchiveError, match="PAX"):
        unpack(source, dest)


def test_stopping_gives_up_with_an_archive_error(tmp_path: Path, dest: Path) -> None:
    source = archive(tmp_path, lambda tar: add_file(tar, "f"))
    stop = threading.Event()
    stop.set()
    with open(source, "rb") as fh, pytest.raises(ArchiveError, match="interrupted"):
        extract(fh, str(dest), CAPS, stop=stop)


def test_gnu_tar_output_unpacks(tmp_path: Path, dest: Path) -> None:
    gnu_tar = shutil.which("tar")
    if gnu_tar is None:
        pytest.skip("no tar on this host")
    src = tmp_path / "src"
    (src / "p" / ("long" * 40)).mkdir(parents=True)
    (src / "p" / ("long" * 40) / "f").write_text("deep")
    (src / "l").symlink_to("p")
    subprocess.run([gnu_tar, "-c", "-f", str(tmp_path / "g.tar"), "-C", str(src), "."], check=True)
    assert unpack(tmp_path / "g.tar", dest) == []
    assert (dest / "p" / ("long" * 40) / "f").read_text() == "deep"
    assert os.readlink(dest / "l") == "p"


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("./a//b/", ("a", "b")),
        (".", ()),
        ("./", ()),
        ("/etc/passwd", None),
        ("a/../b", None),
        ("..", None),
        ("a\0b", None),
        ("x" * 256, None),
    ],
)
def test_normalise(name: str, parts: tuple[str, ...] | None) -> None:
    assert normalise(name) == parts


def test_limits_come_from_the_config() -> None:
    config = resolve_config([("c.toml", "[limits]\nmax_save_files = 5\n")], {}, home="/home/u")
    assert config.limits == Limits(max_save_files=5)
    assert copy_caps(config.limits) == Caps(
        max_members=5, max_file_bytes=Limits().max_save_file_bytes, max_total_bytes=Limits().max_save_bytes
    )
    with pytest.raises(ConfigError, match=r"'limits\.max_save_bytes' must be at least 1"):
        resolve_config([("c.toml", "[limits]\nmax_save_bytes = 0\n")], {}, home="/home/u")
    with pytest.raises(ConfigError, match=r"unknown key 'limits\.max_files'"):
        resolve_config([("c.toml", "[limits]\nmax_files = 5\n")], {}, home="/home/u")


def test_names_left_out_cannot_drive_the_terminal(tmp_path: Path, dest: Path) -> None:
    source = archive(tmp_path, lambda tar: add_file(tar, "/\x1b]0;owned\x07" + "x" * 300))
    (shown,) = unpack(source, dest)
    assert shown.startswith("/\\x1b]0;owned\\x07xxx")
    assert shown.endswith("…")
    assert len(shown) == 257
    assert shown.isprintable()


async def test_a_deadline_stops_an_unpack_in_its_worker_thread() -> None:
    seen: list[str] = []

    def work(stop: threading.Event) -> None:
        while not stop.wait(0.01):
            pass
        seen.append("stopped")
        raise ArchiveError("unpacking was interrupted")

    with anyio.move_on_after(0.2) as scope:
        await run_stoppable(work)
    assert scope.cancelled_caught
    assert seen == ["stopped"]


async def test_a_stoppable_unpack_returns_and_raises_as_itself() -> None:
    assert await run_stoppable(lambda stop: 42) == 42

    def fail(stop: threading.Event) -> None:
        raise ArchiveError("boom")

    with pytest.raises(ArchiveError, match="boom"):
        await run_stoppable(fail)
