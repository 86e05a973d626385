"""`coi fork` end to end: the real incusd, the fake Claude CLI of the coi-test-debian image, a
session started with `coi shell --background` that has a conversation."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from coi_async.errors import NotFoundError
from coi_async.incus import IncusClient
from coi_async.incus.exec import LOST_EXEC, ExecResult
from coi_async.naming import KEY_FORKED_FROM, KEY_SESSION, KEY_SLOT, KEY_WORKSPACE
from tests.helpers import busybox, remove_instance
from tests.integration.shell_harness import ShellWorld

pytestmark = [pytest.mark.incus, pytest.mark.timeout(300)]

PREFIX = "h15f-"
CONVERSATIONS = "/home/code/.claude/projects/-workspace"
FORKED = re.compile(r"Forked (\S+) into (\S+) \(session ([0-9a-f-]{36})\)")


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def remove_worktrees(workspace: Path) -> None:
    """Every linked worktree of the workspace's repository, and their branches."""
    if not (workspace / ".git").exists():
        return
    listed = git(workspace, "worktree", "list", "--porcelain")
    paths = [line.split(" ", 1)[1] for line in listed.splitlines() if line.startswith("worktree ")]
    for path in paths[1:]:
        subprocess.run(["git", "-C", str(workspace), "worktree", "remove", "--force", path], check=False)
    subprocess.run(["git", "-C", str(workspace), "worktree", "prune"], check=False)


@pytest.fixture
async def world(tmp_path: Path, incus_project: str, incus: IncusClient) -> AsyncIterator[ShellWorld]:
    w = ShellWorld(tmp_path, incus_project, incus, prefix=PREFIX)
    w.setup()
    try:
        yield w
    finally:
        await w.remove_all()
        remove_worktrees(w.workspace)


async def as_code(world: ShellWorld, name: str, *argv: str) -> ExecResult:
    """`argv` as the code user; asked again while incusd loses track of it (exit -1 on a loaded
    host: the commands here are idempotent)."""
    for _ in range(3):
        result = await world.incus.exec(name, list(argv), env={"HOME": "/home/code"}, user=1000, group=1000)
        if result.exit_code != LOST_EXEC:
            break
    return result


async def conversation_of(world: ShellWorld, name: str) -> dict[str, list[str]]:
    """The fake tool's conversations in container `name`: id → the texts, in order."""
    found: dict[str, list[str]] = {}
    for entry in await world.incus.list_directory(name, CONVERSATIONS):
        data = (await world.incus.pull_file(name, f"{CONVERSATIONS}/{entry}")).data
        found[entry.removesuffix(".jsonl")] = [json.loads(line)["text"] for line in data.splitlines()]
    return found


async def screen(world: ShellWorld, name: str, *, showing: str) -> str:
    text = ""
    with anyio.move_on_after(20):
        while showing not in text:
            captured = await world.run("tmux", "capture", name)
            text = captured.stdout
            if showing not in text:
                await anyio.sleep(0.2)
    assert showing in text, text
    return text


async def say_to(world: ShellWorld, name: str, line: str) -> None:
    """Type `line` into the session's tool and wait until it has answered."""
    sent = await world.run("tmux", "send", name, line)
    assert sent.code == 0, sent.stderr
    await screen(world, name, showing=f"Claude: {line}")


async def original(world: ShellWorld) -> str:
    """A background session whose tool has a conversation."""
    started = await world.run("shell", "--background")
    assert started.code == 0, started.stderr
    name = world.container(1)
    await screen(world, name, showing="You:")
    await say_to(world, name, "before the fork")
    return name


def forks_of(stdout: str, source: str) -> list[tuple[str, str]]:
    found = [m.groups() for m in map(FORKED.fullmatch, stdout.splitlines()) if m]
    assert all(src == source for src, _, _ in found), stdout
    return [(name, session) for _, name, session in found]


async def test_forks_go_on_with_the_conversation_and_the_home(world: ShellWorld) -> None:
    source = await original(world)
    [orig_id] = (await conversation_of(world, source)).keys()
    made = await as_code(world, source, "sh", "-c", "echo made before > /home/code/marker")
    assert made.ok, made

    done = await world.run("fork", source, "-n", "3")
    assert done.code == 0, done.stderr
    forks = forks_of(done.stdout, source)
    assert sorted(name for name, _ in forks) == [world.container(s) for s in (2, 3, 4)], done.stdout
    source_instance = await world.incus.get_instance(source)
    ids = {session for _, session in forks}
    assert len(ids) == 3
    assert source_instance.config[KEY_SESSION] not in ids

    conversations: set[str] = set()
    for name, session in forks:
        instance = await world.incus.get_instance(name)
        assert instance.running
        assert instance.config[KEY_FORKED_FROM] == source
        assert instance.config[KEY_SESSION] == session
        assert instance.config[KEY_SLOT] == name.rsplit("-", 1)[1]
        assert instance.config[KEY_WORKSPACE] == str(world.workspace)
        # The home as it was: the file made before the fork, and the conversation forked.
        marker = await world.incus.pull_file(name, "/home/code/marker")
        assert marker.data == b"made before\n"
        assert marker.info.uid == 1000
        text = await screen(world, name, showing="You: before the fork")
        assert f"Forked session {orig_id} into" in text
        banner = re.search(r"^Session: (\S+)$", text, re.MULTILINE)
        assert banner is not None, text
        new_id = banner[1]
        found = await conversation_of(world, name)
        assert found[new_id] == ["before the fork", "before the fork"]
        assert found[orig_id] == ["before the fork", "before the fork"]
        conversations.add(new_id)
        meta = json.loads((world.sessions / session / "metadata.json").read_text())
        assert (meta["container_name"], meta["workspace"]) == (name, str(world.workspace))
    assert len(conversations) == 3
    assert orig_id not in conversations

    # Each conversation goes on apart from the others.
    first, second = forks[0][0], forks[1][0]
    await say_to(world, first, "only in the first fork")
    assert "only in the first fork" not in json.dumps(await conversation_of(world, source))
    assert "only in the first fork" not in json.dumps(await conversation_of(world, second))

    # `coi list` tells where each came from.
    listed = await world.run("list", "--format", "json")
    assert listed.code == 0, listed.stderr
    rows = {c["name"]: c for c in json.loads(listed.stdout)["active_containers"]}
    assert {name: rows[name].get("forked_from") for name, _ in forks} == dict.fromkeys(
        (n for n, _ in forks), source
    )
    assert "forked_from" not in rows[source]
    as_text = await world.run("list")
    assert f"    Forked from: {source}" in as_text.stdout

    # Ordinary sessions: shutdown saves the fork's conversation under its own id, resume goes on.
    name, session = forks[0]
    shut = await world.run("shutdown", name)
    assert shut.code == 0, shut.stderr
    with pytest.raises(NotFoundError):
        await world.incus.get_instance(name)
    saved = world.conversation(world.sessions / session)
    assert "only in the first fork" in saved
    resumed = await world.run("shell", f"--resume={session}", "--background")
    assert resumed.code == 0, resumed.stderr
    [again] = [i.name for i in await world.ours() if i.config.get(KEY_SESSION) == session]
    await screen(world, again, showing="You: only in the first fork")


async def test_worktree_forks_each_have_a_branch_of_their_own(world: ShellWorld) -> None:
    git(world.workspace, "init", "--quiet", "--initial-branch", "main")
    (world.workspace / "README").write_text("the project\n")
    git(world.workspace, "add", "README")
    git(
        world.workspace,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "commit",
        "--quiet",
        "-m",
        "one",
    )
    source = await original(world)

    done = await world.run("fork", source, "-n", "2", "--worktree")
    assert done.code == 0, done.stderr
    forks = forks_of(done.stdout, source)
    assert len(forks) == 2
    trees = re.findall(r"^  Worktree: (\S+) \(branch (coi/fork-[0-9a-f]{8})\)$", done.stdout, re.MULTILINE)
    assert len(trees) == 2, done.stdout
    paths: list[Path] = []
    for (name, session), (path, branch) in zip(forks, trees, strict=True):
        tree = Path(path)
        assert tree.is_relative_to(world.home / ".coi" / "worktrees")
        assert branch == f"coi/fork-{session[:8]}"
        assert git(tree, "branch", "--show-current") == branch
        assert (tree / "README").read_text() == "the project\n"
        assert tree.stat().st_uid == world.workspace.stat().st_uid
        instance = await world.incus.get_instance(name)
        assert instance.expanded_devices["workspace"]["source"] == path
        assert instance.config[KEY_WORKSPACE] == path
        paths.append(tree)

    # A file one fork writes is its own: not in the other fork, nor in the original workspace.
    (first, _), (second, _) = forks
    wrote = await as_code(world, first, "sh", "-c", "echo mine > /workspace/from-the-first")
    assert wrote.ok, wrote
    assert (paths[0] / "from-the-first").read_text() == "mine\n"
    assert not (paths[1] / "from-the-first").exists()
    assert not (world.workspace / "from-the-first").exists()
    elsewhere = await as_code(world, second, "test", "-e", "/workspace/from-the-first")
    assert elsewhere.exit_code == 1
    inside_source = await as_code(world, source, "test", "-e", "/workspace/from-the-first")
    assert inside_source.exit_code == 1
    assert git(world.workspace, "status", "--porcelain") == ""

    # Ordinary sessions: shut down, the first fork resumes on its worktree (and only there).
    first_id = forks[0][1]
    shut = await world.run("shutdown", first)
    assert shut.code == 0, shut.stderr
    here = await world.run("shell", f"--resume={first_id}", "--background")
    here.one_error(1, f"belongs to workspace {paths[0]}")
    there = await world.run("shell", "-w", str(paths[0]), f"--resume={first_id}", "--background")
    assert there.code == 0, there.stderr
    [again] = [i for i in await world.incus.list_instances() if i.config.get(KEY_SESSION) == first_id]
    try:
        back = await as_code(world, again.name, "cat", "/workspace/from-the-first")
        assert back.stdout == b"mine\n"
    finally:
        await remove_instance(world.incus, again.name)


async def test_bad_input_is_one_error_and_makes_nothing(world: ShellWorld, unique: str) -> None:
    missing = await world.run("fork", f"{PREFIX}nothing-{unique}")
    missing.one_error(2, "not found")
    other = f"{PREFIX}{unique}-other"
    await world.incus.create_instance(busybox(other))
    try:
        not_ours = await world.run("fork", other)
        not_ours.one_error(2, f"container {other} is not a coi session")
    finally:
        await remove_instance(world.incus, other)

    source = await original(world)
    before = sorted(p.name for p in world.saved_sessions())
    (await world.run("fork", source, "-n", "0")).one_error(2, "invalid -n 0")
    too_many = await world.run("fork", source, "-n", "10")
    too_many.one_error(2, "cannot make 10 forks", "9 of the 10 slots")
    (await world.run("fork", source, "--worktree")).one_error(2, "is not in one")
    git(world.workspace, "init", "--quiet")
    (await world.run("fork", source, "--worktree")).one_error(2, "has none")
    (world.workspace / "notes").write_text("not committed\n")
    git(world.workspace, "add", "notes")
    git(
        world.workspace, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "n"
    )
    (world.workspace / "notes").write_text("changed\n")
    (await world.run("fork", source, "--worktree")).one_error(1, "uncommitted changes")

    await world.incus.stop_instance(source, force=True)
    (await world.run("fork", source)).one_error(1, f"container {source} is not running")

    assert [i.name for i in await world.ours()] == [source]
    assert sorted(p.name for p in world.saved_sessions()) == before
    assert not (world.home / ".coi" / "worktrees").exists()
    assert git(world.workspace, "worktree", "list").count("\n") == 0


async def test_a_fork_that_fails_leaves_nothing_behind(world: ShellWorld) -> None:
    git(world.workspace, "init", "--quiet")
    (world.workspace / "README").write_text("x\n")
    git(world.workspace, "add", "README")
    git(
        world.workspace, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "x"
    )
    source = await original(world)
    before = sorted(p.name for p in world.saved_sessions())
    # The copies have no tmux (the original's server runs on from memory): their start fails.
    gone = await world.incus.exec(source, ["rm", "-f", "/usr/bin/tmux"])
    assert gone.exit_code in (0, LOST_EXEC), gone
    assert await world.incus.lookup_file(source, "/usr/bin/tmux") is None

    done = await world.run("fork", source, "-n", "2", "--worktree")
    assert done.code == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len([line for line in lines if line.startswith(f"Failed to fork {source} (session ")]) == 2, lines
    assert lines[-1] == f"Error: 2 of 2 forks of {source} failed"
    assert [i.name for i in await world.ours()] == [source]
    assert sorted(p.name for p in world.saved_sessions()) == before
    assert "coi/fork-" not in git(world.workspace, "branch", "--list")
    assert git(world.workspace, "worktree", "list").count("\n") == 0
    assert list((world.home / ".coi" / "worktrees").glob("*/*")) == []
