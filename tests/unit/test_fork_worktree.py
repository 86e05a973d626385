"""`coi fork --worktree` on the host: the repository checks and the worktrees (real git, no incusd)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest

from coi_async.orchestration.sessions.forking import (
    DirtyWorkspaceError,
    NotARepositoryError,
    Worktree,
    add_worktree,
    check_repository,
    remove_worktree,
    worktrees_root,
)

ID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit(repo: Path, name: str = "README", text: str = "hello\n") -> None:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", name)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "--quiet", "--initial-branch", "main")
    return path


async def test_not_a_repository_or_no_commit(tmp_path: Path, repo: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(NotARepositoryError, match="is not in one") as raised:
        await check_repository(str(plain))
    assert raised.value.exit_code == 2
    with pytest.raises(NotARepositoryError, match="has none"):
        await check_repository(str(repo))


@pytest.mark.parametrize("change", ["modified", "untracked", "staged"])
async def test_uncommitted_changes_are_refused(repo: Path, change: str) -> None:
    commit(repo)
    if change == "modified":
        (repo / "README").write_text("changed\n")
    elif change == "untracked":
        (repo / "new-file").write_text("x\n")
    else:
        (repo / "README").write_text("changed\n")
        git(repo, "add", "README")
    with pytest.raises(DirtyWorkspaceError, match="uncommitted changes") as raised:
        await check_repository(str(repo))
    assert raised.value.exit_code == 1


async def test_worktrees_on_branches_of_their_own(tmp_path: Path, repo: Path) -> None:
    commit(repo, "sub/dir/file")
    found = await check_repository(str(repo / "sub" / "dir"))
    assert (found.top, found.prefix) == (str(repo), "sub/dir/")
    root = worktrees_root(str(tmp_path / ".coi"), found)
    assert root.parent == tmp_path / ".coi" / "worktrees"
    assert root.name.startswith("project-")

    ids = [f"{i}{ID[1:]}" for i in range(4)]
    made: list[Worktree] = []

    async def one(fork_id: str) -> None:
        made.append(await add_worktree(found, root, fork_id))

    async with anyio.create_task_group() as tg:  # as the forks make them: at once
        for fork_id in ids:
            tg.start_soon(one, fork_id)
    assert sorted(w.branch for w in made) == sorted(f"coi/fork-{i}{ID[1:8]}" for i in range(4))
    for tree in made:
        assert git(Path(tree.path), "branch", "--show-current") == tree.branch
        assert tree.workspace == f"{tree.path}/sub/dir"
        assert (Path(tree.workspace) / "file").read_text() == "hello\n"
    assert root.stat().st_mode & 0o777 == 0o700

    await remove_worktree(found, made[0])
    assert not Path(made[0].path).exists()
    assert made[0].branch not in git(repo, "branch", "--list")
    assert made[1].branch in git(repo, "branch", "--list")
