"""A hostile `tar` inside a real container against every path that copies a tree out of one: the
save `coi shutdown` uses (`SessionSaver.save`), `coi shutdown`, `coi kill` and `coi file pull -r`.

The container's `tar` is replaced by a script (first on PATH) that sends a crafted archive made
here with Python, whatever coi asked for. For each attack: nothing is written outside the
destination (a canary tree in the test's HOME, and HOME itself, are compared before and after),
the previous saved copy is kept when the copy fails, what succeeds holds only plain files,
directories and links that stay inside, the command's other containers finish, and the bad
one is reported. Most runs use small `[limits]` so that they stay fast; one shows that the
default limits stop a million members too.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import stat
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from coi_async.config import resolve_config
from coi_async.config.model import Config
from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.naming import KEY_SESSION, PREFIX_ENV
from coi_async.orchestration.bulk.lifecycle import SessionSaver
from coi_async.orchestration.sessions.store import SessionStore
from coi_async.tools import get_tool
from tests.coi_cli import coi, isolated_env
from tests.helpers import busybox, remove_instance, throwaway_project
from tests.tar_payloads import (
    PATH_MAX_CHAIN_SKIPPED,
    add_entry,
    add_file,
    gzipped,
    many_empty_members,
    path_max_chain,
    sparse_member,
    tar_bytes,
)

pytestmark = pytest.mark.incus

PREFIX = "h12a-"
CLAUDE = "/home/code/.claude"
SMALL_LIMITS = "[limits]\nmax_save_files = 1000\nmax_save_file_bytes = 1048576\nmax_save_bytes = 4194304\n"
HOSTILE_TAR = "#!/bin/sh\n# Whatever coi asks for, it gets the payload.\nexec zcat /hostile/payload.tar.gz\n"
INSTALL_HOSTILE_TAR = (
    f"mkdir -p /usr/local/bin /hostile {CLAUDE} && echo real > {CLAUDE}/settings.json"
    " && cat > /usr/local/bin/tar && chmod 755 /usr/local/bin/tar"
)


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], bytes]  # the canary directory -> the gzipped archive
    # What a copy that succeeds leaves out (at least), given the canary directory.
    skipped: Callable[[Path], set[str]] = lambda _: set()
    present: tuple[str, ...] = ()  # what it holds besides settings.json
    error: str = ""  # for a copy that is refused: a pattern of its message


def archive(*builds: Callable[[tarfile.TarFile], None], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A gzipped archive with `./settings.json` ("new": what shows the copy happened) and more."""

    def build(tar: tarfile.TarFile) -> None:
        add_entry(tar, "./", tarfile.DIRTYPE, mode=0o700)
        add_file(tar, "./settings.json", b"new")
        for one in builds:
            one(tar)

    return gzipped(tar_bytes(build, fmt=fmt))


def climb_to(path: Path) -> str:
    return "../" * 40 + str(path).lstrip("/")


def escaping_names(canary: Path) -> list[str]:
    return [climb_to(canary / "pwned"), str(canary / "pwned"), "./a/../../pwned"]


def names_that_escape(canary: Path) -> Callable[[tarfile.TarFile], None]:
    def build(tar: tarfile.TarFile) -> None:
        for name in escaping_names(canary):
            add_file(tar, name, b"owned")

    return build


def hardlinks_that_escape(canary: Path) -> Callable[[tarfile.TarFile], None]:
    def build(tar: tarfile.TarFile) -> None:
        add_entry(tar, "./missing", tarfile.LNKTYPE, link="./not-in-the-archive")
        add_entry(tar, "./outside", tarfile.LNKTYPE, link=f"{canary}/keep")
        add_entry(tar, "./climb", tarfile.LNKTYPE, link=climb_to(canary / "keep"))

    return build


def special_files(tar: tarfile.TarFile) -> None:
    add_entry(tar, "./null", tarfile.CHRTYPE)
    add_entry(tar, "./disk", tarfile.BLKTYPE)
    add_entry(tar, "./pipe", tarfile.FIFOTYPE)


CASES = {
    "path-max-symlink-chain": Case(
        lambda canary: archive(lambda tar: path_max_chain(tar, str(canary))),
        skipped=lambda _: set(PATH_MAX_CHAIN_SKIPPED),
    ),
    "dotdot-and-absolute-names": Case(
        lambda canary: archive(names_that_escape(canary)),
        skipped=lambda canary: set(escaping_names(canary)),
    ),
    "hardlinks-to-missing-and-outside": Case(
        lambda canary: archive(hardlinks_that_escape(canary)),
        skipped=lambda _: {"./missing", "./outside", "./climb"},
    ),
    "device-nodes-and-fifo": Case(
        lambda _: archive(special_files), skipped=lambda _: {"./null", "./disk", "./pipe"}
    ),
    "setuid-file": Case(
        lambda _: archive(lambda tar: add_file(tar, "./suid", b"#!/bin/sh\n", mode=0o6777)),
        present=("suid",),
    ),
    "sparse-10-gib": Case(
        lambda _: archive(lambda tar: sparse_member(tar, 10 << 30), fmt=tarfile.PAX_FORMAT),
        error=r"big is larger than 1 MiB \(limit: limits.max_save_file_bytes\)",
    ),
    "a-million-members": Case(
        lambda _: many_empty_members(),
        error=r"the tar stream is larger than .* \(limit: limits.max_save_bytes\)",
    ),
    "not-a-tar-stream": Case(lambda _: gzipped(os.urandom(8192)), error="malformed tar header"),
}
REFUSED = [name for name, case in CASES.items() if case.error]
LEFT_OUT = [name for name, case in CASES.items() if not case.error]


# --- what the host looks like -------------------------------------------------------------------


def snapshot(root: Path, *, skip: Path | None = None) -> dict[str, tuple[object, ...]]:
    """Every path below `root` (not below `skip`): its type, mode, and content hash or link."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if here / n != skip]
        for name in dirnames + filenames:
            path = here / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path.relative_to(root))] = ("file", st.st_mode, digest)
            else:
                found[str(path.relative_to(root))] = ("other", st.st_mode)
    return found


def make_canary(home: Path) -> Path:
    canary = home / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "keep").write_text("keep")
    (canary / "sub" / "deep").write_text("deep")
    return canary


def assert_safe_copy(root: Path) -> None:
    """Only plain files, directories and links that lead inside; no set-id or group/other write.

    Walked through directory descriptors: the attack's directories nest past PATH_MAX.
    """
    assert os.lstat(root).st_mode & 0o7022 == 0
    for where, dirnames, filenames, dirfd in os.fwalk(root):
        rel = os.path.relpath(where, root)
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=dirfd)
                lands = os.path.normpath(os.path.join(rel, target))
                assert not target.startswith("/"), (rel, name, target)
                assert not f"{lands}/".startswith("../"), (rel, name, target)
                continue
            assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode), (rel, name)
            assert st.st_mode & 0o7022 == 0, (rel, name, oct(st.st_mode))


def seed_previous(copy: Path) -> dict[str, tuple[object, ...]]:
    copy.mkdir(parents=True)
    (copy / "settings.json").write_text("previous")
    (copy / "projects").mkdir()
    (copy / "projects" / "conv.jsonl").write_text("conversation\n")
    return snapshot(copy)


# --- containers ---------------------------------------------------------------------------------


def container_names(n: int) -> list[str]:
    stem = secrets.token_hex(4)
    return [f"{PREFIX}{stem}-{i}" for i in range(1, n + 1)]


async def make_container(incus: IncusClient, name: str, payload: bytes | None) -> str:
    """A running busybox container whose session data is /home/code/.claude; with a payload,
    its `tar` is the hostile one sending it. Returns its session id."""
    session_id = str(uuid.uuid4())
    await incus.create_instance(busybox(name, config={KEY_SESSION: session_id}))
    script = INSTALL_HOSTILE_TAR if payload is not None else f"mkdir -p {CLAUDE} && echo real > {CLAUDE}/f"
    result = await incus.exec(name, ["sh", "-c", script], stdin=HOSTILE_TAR.encode())
    assert result.ok, result.stderr
    if payload is not None:
        await send_payload(incus, name, payload)
    return session_id


async def send_payload(incus: IncusClient, name: str, payload: bytes) -> None:
    """What the hostile tar in `name` sends next."""
    await incus.push_file(name, "/hostile/payload.tar.gz", io.BytesIO(payload))


@pytest.fixture(scope="module")
async def project(incus_socket: str) -> AsyncIterator[str]:
    async with throwaway_project(PREFIX, description="coi-async hostile tar test; safe to delete") as name:
        yield name


@pytest.fixture(scope="module")
async def client(project: str) -> AsyncIterator[IncusClient]:
    async with IncusClient.connect(project=project) as c:
        yield c


@pytest.fixture(scope="module")
async def hostile(client: IncusClient) -> AsyncIterator[str]:
    """One container with the hostile tar, shared by the cases that leave it running."""
    name = container_names(1)[0]
    await make_container(client, name, gzipped(b""))
    try:
        yield name
    finally:
        await remove_instance(client, name)


def configured(home: Path, limits: str) -> Config:
    """The config a coi run in `home` reads: `limits` in the user's config file, our prefix."""
    path = home / ".config" / "coi" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(limits)
    return resolve_config([(str(path), limits)], {PREFIX_ENV: PREFIX}, home=str(home))


def assert_copied(case: Case, copy: Path, *, mode: int = 0o755) -> None:
    """A copy that went through: the new data, only what is safe, set-id bits gone; the modes of
    a saved session only its owner's (it is in ~/.coi), a pulled tree's as `mode`."""
    assert (copy / "settings.json").read_text() == "new"
    for name in case.present:
        assert stat.S_IMODE((copy / name).lstat().st_mode) == mode
    assert_safe_copy(copy)


def store_of(config: Config) -> SessionStore:
    return SessionStore(config.sessions_dir, config_dir=".claude")


# --- the save path ------------------------------------------------------------------------------


@pytest.mark.parametrize("case_name", list(CASES))
async def test_the_save_shutdown_uses_keeps_the_host_safe(
    client: IncusClient, hostile: str, home: Path, case_name: str
) -> None:
    case = CASES[case_name]
    canary = make_canary(home)
    config = configured(home, SMALL_LIMITS)
    saver = SessionSaver(store_of(config), get_tool("claude"), config)
    inst = await client.get_instance(hostile)
    session_dir = saver.store.session_dir(inst.config[KEY_SESSION])
    copy = session_dir / ".claude"
    previous = seed_previous(copy)
    await send_payload(client, hostile, case.build(canary))
    before = snapshot(home, skip=home / ".coi")

    if case.error:
        with pytest.raises(CoiError, match=case.error):
            await saver.save(client, inst)
        assert snapshot(copy) == previous
    else:
        saved = await saver.save(client, inst)
        assert case.skipped(canary) <= set(saved.skipped), saved.skipped
        assert_copied(case, copy, mode=0o700)

    assert snapshot(home, skip=home / ".coi") == before
    assert set(os.listdir(session_dir)) <= {".claude", "metadata.json"}  # no spool or staging left
    assert (await client.get_instance(hostile)).running


async def test_the_default_limits_stop_a_million_members_without_filling_the_disk(
    client: IncusClient, hostile: str, home: Path
) -> None:
    config = configured(home, "")
    saver = SessionSaver(store_of(config), get_tool("claude"), config)
    inst = await client.get_instance(hostile)
    copy = saver.store.session_dir(inst.config[KEY_SESSION]) / ".claude"
    previous = seed_previous(copy)
    await send_payload(client, hostile, many_empty_members())

    # The whole stream (512 MB) is within the default caps' spool bound; its member count is not.
    with pytest.raises(CoiError, match=r"more than 100000 entries \(limit: limits.max_save_files\)"):
        await saver.save(client, inst)
    assert snapshot(copy) == previous
    assert sorted(os.listdir(copy.parent)) == [".claude"]  # no spool, no staging left


async def test_tar_errors_keep_only_their_last_lines(client: IncusClient, hostile: str, home: Path) -> None:
    script = 'i=0; while [ $i -lt 20000 ]; do echo "tar: complaint $i" >&2; i=$((i+1)); done; exit 2'
    await client.push_file(hostile, "/usr/local/bin/tar", f"#!/bin/sh\n{script}\n".encode(), mode=0o755)
    config = configured(home, "")
    saver = SessionSaver(store_of(config), get_tool("claude"), config)
    try:
        with pytest.raises(CoiError) as caught:
            await saver.save(client, await client.get_instance(hostile))
    finally:
        await client.push_file(hostile, "/usr/local/bin/tar", HOSTILE_TAR.encode(), mode=0o755)
    assert str(caught.value).endswith("tar: complaint 19999")
    assert "tar: complaint 19994" not in str(caught.value)
    assert "tar: complaint 19995" in str(caught.value)


# --- coi file pull -r ---------------------------------------------------------------------------


@pytest.mark.parametrize("case_name", list(CASES))
async def test_file_pull_keeps_the_host_safe(
    client: IncusClient, hostile: str, project: str, home: Path, tmp_path: Path, case_name: str
) -> None:
    case = CASES[case_name]
    canary = make_canary(home)
    configured(home, SMALL_LIMITS)
    env = isolated_env(home=home, project=project, prefix=PREFIX)
    target = tmp_path / "pulled"
    previous = seed_previous(target)
    await send_payload(client, hostile, case.build(canary))
    before = snapshot(home, skip=home / ".coi")

    run = await coi("file", "pull", "-r", f"{hostile}:{CLAUDE}", str(target), env=env)

    if case.error:
        line = run.one_error(1, f"cannot copy {hostile}:{CLAUDE}")
        assert re.search(case.error, line), line
        assert snapshot(target) == previous
    else:
        assert run.code == 0, run.stderr
        for name in case.skipped(canary):
            assert f"Skipped {name}: " in run.stdout + run.stderr
        assert_copied(case, target)
    assert snapshot(home, skip=home / ".coi") == before
    assert sorted(os.listdir(tmp_path)) == ["home", "pulled"]  # no spool or staging left


async def test_file_pull_into_a_directory_never_replaces_it(
    client: IncusClient, hostile: str, project: str, home: Path, tmp_path: Path
) -> None:
    await client.exec(hostile, ["ln", "-sfn", "/", "/tmp/root-link"])
    env = isolated_env(home=home, project=project, prefix=PREFIX)
    target = tmp_path / "dir"
    kept = seed_previous(target)
    for source in ("/", "/tmp/root-link"):
        run = await coi("file", "pull", "-r", f"{hostile}:{source}", f"{target}/", env=env)
        run.one_error(2, "root directory, which has no name")
        assert snapshot(target) == kept


# --- coi shutdown and coi kill ------------------------------------------------------------------


def left_out(output: str, name: str) -> set[str]:
    """What the bulk command's block of lines for `name` says was left out of its saved data."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if f"container {name}" in line and line[:1] != " ")
    block = lines[start + 1 :]
    block = block[: next((i for i, line in enumerate(block) if line[:1] != " "), len(block))]
    found = [line.split(": ", 1)[1] for line in block if line.startswith("  Left out of the saved data")]
    return set(found[0].split(", ")) if found else set()


@pytest.fixture
async def bulk_project(incus_socket: str) -> AsyncIterator[tuple[str, IncusClient]]:
    """A project of its own: `--all` acts on every coi container in it."""
    async with (
        throwaway_project(PREFIX, description="coi-async hostile tar bulk test; safe to delete") as name,
        IncusClient.connect(project=name) as c,
    ):
        yield name, c


@pytest.mark.parametrize("command", ["shutdown", "kill"])
async def test_bulk_commands_report_each_hostile_container_and_finish_the_others(
    bulk_project: tuple[str, IncusClient], home: Path, command: str
) -> None:
    project, incus = bulk_project
    canary = make_canary(home)
    config = configured(home, SMALL_LIMITS)
    store = store_of(config)
    names = container_names(len(CASES) + 1)
    good, hostile = names[0], dict(zip(names[1:], CASES, strict=True))
    sessions: dict[str, str] = {}

    async def one(name: str) -> None:
        payload = CASES[hostile[name]].build(canary) if name in hostile else None
        sessions[name] = await make_container(incus, name, payload)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)
    previous = {name: seed_previous(store.session_dir(sessions[name]) / ".claude") for name in names}
    before = snapshot(home, skip=home / ".coi")

    args = (
        ["shutdown", "--all", "--force", "--timeout", "5"]
        if command == "shutdown"
        else ["kill", "--all", "--force"]
    )
    run = await coi(*args, env=isolated_env(home=home, project=project, prefix=PREFIX))

    assert run.code == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    left = {i.name: i.running for i in await incus.list_instances()}
    assert left == {name: True for name, case in hostile.items() if CASES[case].error}
    for name, case_name in hostile.items():
        case = CASES[case_name]
        copy = store.session_dir(sessions[name]) / ".claude"
        if case.error:
            failed = [line for line in run.stdout.splitlines() if f"Failed to {command} {name}: " in line]
            assert len(failed) == 1, run.stdout
            assert re.search(case.error, failed[0]), failed[0]
            assert snapshot(copy) == previous[name]
        else:
            assert_copied(case, copy, mode=0o700)
            assert case.skipped(canary) <= left_out(run.stdout, name), run.stdout
    assert (store.session_dir(sessions[good]) / ".claude" / "f").read_text() == "real\n"
    assert snapshot(home, skip=home / ".coi") == before
