"""`coi file push/pull` end to end: bytes, names with spaces, modes and owners survive; a pull
never writes outside its target."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from coi_async.incus import IncusClient
from tests.coi_cli import coi

pytestmark = pytest.mark.incus


@pytest.fixture
def box_name(unique: str) -> str:
    return f"h5-{unique}-files"


async def stat_in(incus: IncusClient, box: str, path: str) -> str:
    result = await incus.exec(box, ["stat", "-c", "%u:%g %a %s", path])
    assert result.ok, result.stderr
    return result.stdout.decode().strip()


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


async def test_file_round_trip(incus: IncusClient, incus_project: str, box: str, tmp_path: Path) -> None:
    data = os.urandom(1_000_000) + b"\x00\xff end"
    src = tmp_path / "my file.bin"
    src.write_bytes(data)
    src.chmod(0o751)
    os.chown(src, 1234, 2345)
    push = await coi("file", "push", str(src), f"{box}:/home/code/my file.bin", project=incus_project)
    assert push.code == 0, push.stderr
    assert push.stderr == f"Pushed file {src} -> {box}:/home/code/my file.bin\n"
    assert await stat_in(incus, box, "/home/code/my file.bin") == f"1234:2345 751 {len(data)}"

    back = tmp_path / "back here.bin"
    pull = await coi("file", "pull", f"{box}:/home/code/my file.bin", str(back), project=incus_project)
    assert pull.code == 0, pull.stderr
    assert pull.stderr == f"Pulled file {box}:/home/code/my file.bin -> {back}\n"
    assert back.read_bytes() == data
    assert owner_mode(back) == (1234, 2345, 0o751)

    # Into a directory: a trailing slash, or a directory that exists.
    assert (await coi("file", "push", str(src), f"{box}:/tmp/", project=incus_project)).code == 0
    assert (await stat_in(incus, box, "/tmp/my file.bin")).startswith("1234:2345 751")
    into = tmp_path / "into"
    into.mkdir()
    (into / "keep.txt").write_text("still here")
    pulled = await coi("file", "pull", f"{box}:/tmp/my file.bin", str(into), project=incus_project)
    assert pulled.code == 0, pulled.stderr
    assert (into / "my file.bin").read_bytes() == data
    assert (into / "keep.txt").read_text() == "still here"  # the reference deleted the directory


async def test_directory_round_trip(incus: IncusClient, incus_project: str, box: str, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "sub dir" / "deep").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub dir" / "b.bin").write_bytes(bytes(range(256)))
    (src / "sub dir" / "deep" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "sub dir" / "deep" / "run.sh").chmod(0o750)
    (src / "private").write_text("secret")
    (src / "private").chmod(0o600)
    (src / "link").symlink_to("a.txt")
    for path in [src, *src.rglob("*")]:
        os.chown(path, 1000, 1000, follow_symlinks=False)
    os.chown(src / "private", 1500, 1600)

    no_r = await coi("file", "push", str(src), f"{box}:/workspace/proj", project=incus_project)
    no_r.one_error(2, "source is a directory, use -r flag")
    assert (await incus.exec(box, ["test", "-e", "/workspace/proj"])).exit_code == 1

    # The target name need not match the local name (the reference required it to).
    push = await coi("file", "push", "-r", str(src), f"{box}:/workspace/elsewhere", project=incus_project)
    assert push.code == 0, push.stderr
    assert push.stderr == f"Pushed directory {src} -> {box}:/workspace/elsewhere\n"
    assert await stat_in(incus, box, "/workspace/elsewhere/sub dir/deep/run.sh") == "1000:1000 750 18"
    assert (await stat_in(incus, box, "/workspace/elsewhere/private")).startswith("1500:1600 600")
    link = await incus.exec(box, ["readlink", "/workspace/elsewhere/link"])
    assert link.stdout == b"a.txt\n"

    back = tmp_path / "back"
    pull = await coi("file", "pull", "-r", f"{box}:/workspace/elsewhere", str(back), project=incus_project)
    assert pull.code == 0, pull.stderr
    assert pull.stderr == f"Pulled directory {box}:/workspace/elsewhere -> {back}\n"
    assert (back / "a.txt").read_text() == "alpha"
    assert (back / "sub dir" / "b.bin").read_bytes() == bytes(range(256))
    assert owner_mode(back / "sub dir" / "deep" / "run.sh") == (1000, 1000, 0o750)
    assert owner_mode(back / "private") == (1500, 1600, 0o600)
    assert os.readlink(back / "link") == "a.txt"

    # Pulling again replaces the local copy (the reference's rule), leaving nothing stale.
    (back / "stale.txt").write_text("old")
    again = await coi("file", "pull", "-r", f"{box}:/workspace/elsewhere", str(back), project=incus_project)
    assert again.code == 0, again.stderr
    assert not (back / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".coi-pull")]


async def test_push_and_pull_errors_change_nothing(
    incus: IncusClient, incus_project: str, box: str, tmp_path: Path
) -> None:
    src = tmp_path / "f.txt"
    src.write_text("x")
    cases = [
        (("push", str(src), "no-colon-here"), 2, "destination must be in format 'container:path'"),
        (("push", str(src), f"{box}:"), 2, "destination must be in format 'container:path'"),
        (("push", str(src), ":/tmp/x"), 2, "destination must be in format 'container:path'"),
        (("push", str(src), f"{box}:relative/x"), 2, "path must be absolute"),
        (("push", str(tmp_path / "missing"), f"{box}:/tmp/x"), 1, "source does not exist"),
        (("push", str(src), "h5-no-such-box:/tmp/x"), 1, "container 'h5-no-such-box' not found"),
        (("push", str(src), f"{box}:/no/such/dir/x"), 1, "/no/such/dir does not exist"),
        (("push",), 2, "Missing argument 'LOCAL'"),
        (("push", str(src)), 2, "Missing argument 'CONTAINER:PATH'"),
        (("pull", "nocolon", str(tmp_path / "o")), 2, "source must be in format 'container:path'"),
        (("pull", f"{box}:/no/such/file", str(tmp_path / "o")), 1, f"{box}:/no/such/file: not found"),
        (("pull", "h5-no-such-box:/etc/passwd", str(tmp_path / "o")), 1, "not found"),
        (("pull", f"{box}:/etc/passwd", str(tmp_path / "no" / "dir" / "o")), 1, "is not a directory"),
        (("pull", "-r", f"{box}:/etc", str(tmp_path / "no" / "dir" / "o")), 1, "is not a directory"),
        (("push", "--bogus", str(src), f"{box}:/tmp/x"), 2, "No such option '--bogus'"),
    ]
    for args, code, fragment in cases:
        run = await coi("file", *args, project=incus_project)
        run.one_error(code, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    assert (await incus.exec(box, ["test", "-e", "/tmp/x"])).exit_code == 1


async def test_pull_never_writes_outside_the_target(
    incus: IncusClient, incus_project: str, box: str, tmp_path: Path
) -> None:
    setup = (
        "mkdir -p /tmp/evil/sub && echo ok > /tmp/evil/fine.txt && "
        "ln -s /etc /tmp/evil/abs && ln -s ../../../../../../../../tmp/h5-escape /tmp/evil/up && "
        "ln -s fine.txt /tmp/evil/inside && echo s > /tmp/evil/suid && chmod 4755 /tmp/evil/suid && "
        "ln -s /etc/passwd /tmp/passwd-link"
    )
    assert (await incus.exec(box, ["sh", "-c", setup])).ok
    dst = tmp_path / "dst"
    run = await coi("file", "pull", "-r", f"{box}:/tmp/evil", str(dst), project=incus_project)
    assert run.code == 0, run.stderr
    assert "Skipped ./abs" in run.stderr
    assert "Skipped ./up" in run.stderr
    assert (dst / "fine.txt").read_text() == "ok\n"
    assert os.readlink(dst / "inside") == "fine.txt"
    assert not (dst / "abs").exists()
    assert not (dst / "up").is_symlink()
    assert stat.S_IMODE((dst / "suid").stat().st_mode) == 0o755  # no set-uid file from a container
    for entry in dst.rglob("*"):
        assert entry.is_symlink() or entry.resolve().is_relative_to(dst.resolve())
    assert not Path("/tmp/h5-escape").exists()

    # A single link is followed inside the container, never on the host.
    got = tmp_path / "passwd"
    single = await coi("file", "pull", f"{box}:/tmp/passwd-link", str(got), project=incus_project)
    assert single.code == 0, single.stderr
    assert not got.is_symlink()
    assert b"code:x:1000:1000" in got.read_bytes()  # the container's passwd, not the host's
