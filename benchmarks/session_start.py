"""Session start: `coi run -- true` and `coi shell --background` (until its tmux session is
ready) end to end, each against the reference's sequence of `incus` calls for the same job.

The reference (cli-contract.md §3, `run` row) makes every Incus call a fresh subprocess,
`sg incus-admin -c "incus --project P <args>"`, strictly one after the other:

    info → list (json) → image list (json) → list ^N$ (csv) → launch I N --ephemeral →
    config set ×3 → list N (json) + exec echo ready → config device add workspace (hot-plug) →
    exec --user 1000 --group 1000 --cwd /workspace -- true → delete --force

Both sides run on the same image and workspace, alternately, sample by sample (the order
reversed every other round), after one untimed round (benchmarks/paired.py). Each side starts
from the same machine state: after every sample, untimed, its containers are deleted and the
script waits until incusd lists none of them before the other side is timed. The script prints
the medians and the ratio (target: coi at most 0.3× the reference sequence).

    .venv/bin/python benchmarks/session_start.py [--runs 7] [--image coi-test-busybox] [--project P]
                                                 [--job run|shell|both] [--shell-image coi-test-debian]
                                                 [--baseline OTHER/.venv/bin/coi [--baseline-env K=V]]

With --baseline, a second coi (another checkout's: the tree before a change) is timed in the same
interleaved rounds, and its ratio to this coi is printed: before and after from one machine state.
Each coi side has a runtime directory of its own, so an egress daemon of its own code serves
it. With --baseline-env, the baseline side gets those variables too; with this coi as the baseline,
e.g. `--baseline .venv/bin/coi --baseline-env COI_EGRESS_ATTACH=proxy-device` times the way a
coi not running as root reaches the egress daemon against listening inside the container.

The shell job's reference sequence is §3's `shell` row for a new ephemeral session with a host
~/.claude (credentials copied, sandbox settings merged by python3, tmux server started, session
created); both sides end when the detached tmux session exists, and deletion is not timed.

Without --project the script works in a throwaway project (sharing the default project's images
and profiles) that it removes at the end. Containers are named with a prefix of this run's own,
`bench<hex>-` (COI_CONTAINER_PREFIX for coi), so nothing of another run is touched; HOME points
at a temporary directory so ~/.coi is not touched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fixtures import runtime_dir
from paired import paired

# The coi under test: this interpreter's, unless --coi names another.
COI = str(Path(sys.executable).with_name("coi"))


def incus(project: str, *args: str, check: bool = True) -> str:
    """One reference-style call: a fresh `sg` + `sh` + `incus` process."""
    line = " ".join(shlex.quote(a) for a in ["incus", "--project", project, *args])
    done = subprocess.run(["sg", "incus-admin", "-c", line], capture_output=True, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"{line} failed ({done.returncode}): {done.stderr.decode().strip()}")
    return done.stdout.decode().strip()


def reference_run(project: str, image: str, workspace: str, prefix: str) -> None:
    name = f"{prefix}ref-{secrets.token_hex(3)}"
    incus(project, "info")
    incus(project, "list", "--format=json")  # slot allocation
    incus(project, "image", "list", "--format=json")  # image exists
    incus(project, "list", f"^{name}$", "--format=csv", "--columns=n")  # container exists
    try:
        incus(project, "launch", image, name, "--ephemeral")
        for key in (
            "security.nesting=true",
            "security.syscalls.intercept.mknod=true",
            "security.syscalls.intercept.setxattr=true",
        ):
            incus(project, "config", "set", name, key)
        for _ in range(30):  # wait until ready: state + an exec, no sleep
            incus(project, "list", name, "--format=json")
            if incus(project, "exec", name, "--", "echo", "ready", check=False) == "ready":
                break
        incus(
            project,
            "config",
            "device",
            "add",
            name,
            "workspace",
            "disk",
            f"source={workspace}",
            "path=/workspace",
            "shift=true",
        )
        incus(project, "exec", name, "--user", "1000", "--group", "1000", "--cwd", "/workspace", "--", "true")
    finally:
        incus(project, "delete", name, "--force", check=False)


def coi_run(coi: str, env: dict[str, str], workspace: str) -> None:
    done = subprocess.run(
        [coi, "run", "--", "true"], env=env, cwd=workspace, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"coi run failed ({done.returncode}): {done.stderr.decode().strip()}")


SHELL_HOME_FILES = {
    ".claude/.credentials.json": '{"claudeAiOauth": {"accessToken": "bench"}}',
    ".claude/settings.json": '{"env": {"A": "1"}, "permissions": {"allow": ["Bash(ls)"]}}',
    ".claude.json": '{"userID": "bench"}',
}
SANDBOX_MERGE = (
    "import json,sys; p=sys.argv[1]; d=json.load(open(p)); "
    "d.update({'allowDangerouslySkipPermissions': True, 'bypassPermissionsModeAccepted': True, "
    "'permissions': {'defaultMode': 'bypassPermissions'}}); json.dump(d, open(p, 'w'), indent=2)"
)


def reference_shell_background(project: str, image: str, workspace: str, home: str, prefix: str) -> str:
    """The reference's `coi shell --background` (new, ephemeral, host ~/.claude present), §3 + §2.3/2.4.

    Returns the container name; the caller deletes it, untimed.
    """
    name = f"{prefix}ref-{secrets.token_hex(3)}"
    session = f"coi-{name}"
    as_code = ["--user", "1000", "--group", "1000", "--env", "HOME=/home/code"]
    incus(project, "info")
    incus(project, "list", "--format=json")  # slot allocation
    incus(project, "image", "list", "--format=json")  # image exists
    incus(project, "list", f"^{name}$", "--format=csv", "--columns=n")  # container exists
    incus(project, "init", image, name)
    incus(
        project, "config", "device", "add", name, "workspace", "disk",
        f"source={workspace}", "path=/workspace", "shift=true",
    )  # fmt: skip
    incus(project, "start", name)
    for _ in range(30):  # wait until ready: state + an exec (the reference sleeps 1 s between tries)
        incus(project, "list", name, "--format=json")
        if incus(project, "exec", name, "--", "bash", "-c", "echo ready", check=False) == "ready":
            break
        time.sleep(1)
    # injectCredentials / fresh-session setup: mkdir, pushes, python3 merges, chowns.
    claude = "/home/code/.claude"
    incus(project, "exec", name, "--", "mkdir", "-p", claude)
    incus(project, "file", "push", f"{home}/.claude/.credentials.json", f"{name}{claude}/.credentials.json")
    incus(project, "file", "push", f"{home}/.claude/settings.json", f"{name}{claude}/settings.json")
    incus(project, "exec", name, "--", "test", "-f", f"{claude}/settings.json")
    incus(project, "exec", name, "--", "python3", "-c", SANDBOX_MERGE, f"{claude}/settings.json")
    incus(project, "file", "push", f"{home}/.claude.json", f"{name}/home/code/.claude.json")
    incus(project, "exec", name, "--", "python3", "-c", SANDBOX_MERGE, "/home/code/.claude.json")
    incus(project, "exec", name, "--", "chown", "1000:1000", "/home/code/.claude.json")
    incus(project, "exec", name, "--", "chown", "-R", "1000:1000", claude)
    # The tmux flow: start the server, look for the session, create it detached.
    incus(
        project,
        "exec",
        name,
        *as_code,
        "--",
        "bash",
        "-c",
        "tmux start-server 2>/dev/null || true; sleep 0.1",
    )
    incus(project, "exec", name, *as_code, "--", "bash", "-c", "tmux list-sessions 2>/dev/null || true")
    incus(project, "exec", name, *as_code, "--", "tmux", "has-session", "-t", session, check=False)
    command = "bash -c 'trap : INT; export IS_SANDBOX=\"1\"; claude --verbose --permission-mode bypassPermissions; exec bash'"
    incus(
        project, "exec", name, *as_code, "--cwd", "/workspace", "--",
        "tmux", "new-session", "-d", "-s", session, "-c", "/workspace", command,
    )  # fmt: skip
    return name


def coi_shell_background(coi: str, env: dict[str, str], workspace: str) -> None:
    done = subprocess.run(
        [coi, "shell", "--background"], env=env, cwd=workspace, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"coi shell --background failed ({done.returncode}): {done.stderr.decode().strip()}")


def remove_all(project: str, prefix: str) -> None:
    """Delete (untimed) every instance of the project whose name starts with `prefix`, and wait until
    incusd lists none (an ephemeral container that `coi run` stopped may still be on its way out)."""
    for _ in range(120):
        names = incus(project, "list", f"^{prefix}", "--format=csv", "--columns=n").split()
        if not names:
            return
        for name in names:
            incus(project, "delete", name, "--force", check=False)
        time.sleep(0.25)
    raise SystemExit(f"containers {prefix}* still there after 30 s")


def compare(
    sides: dict[str, Callable[[], object]], runs: int, *, project: str, prefix: str
) -> dict[str, float]:
    """Median seconds of each side, alternately, each sample from a machine without the run's containers."""
    remove_all(project, prefix)
    times = paired(sides, runs, between=lambda: remove_all(project, prefix))
    return {name: statistics.median(samples) for name, samples in times.items()}


@contextlib.contextmanager
def coi_sides(
    opts: argparse.Namespace, job: Callable[[str, dict[str, str]], None]
) -> Iterator[dict[str, Callable[[], object]]]:
    """The coi side, and the baseline coi (another checkout's, or this one with
    --baseline-env) when --baseline names one, each in a runtime directory of its own."""
    extra = dict(item.split("=", 1) for item in opts.baseline_env)
    with contextlib.ExitStack() as stack:
        run_coi = stack.enter_context(runtime_dir("coi", opts.coi))
        sides: dict[str, Callable[[], object]] = {"coi": lambda: job(opts.coi, {"XDG_RUNTIME_DIR": run_coi})}
        if opts.baseline:
            run_base = stack.enter_context(runtime_dir("baseline", opts.baseline))
            sides["baseline"] = lambda: job(opts.baseline, extra | {"XDG_RUNTIME_DIR": run_base})
        yield sides


def write_shell_home(home: str) -> None:
    """The files a `coi shell` session's home needs here (SHELL_HOME_FILES)."""
    for rel, text in SHELL_HOME_FILES.items():
        (Path(home) / rel).parent.mkdir(parents=True, exist_ok=True)
        (Path(home) / rel).write_text(text)


def clean_env(home: str, project: str, prefix: str, image: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("COI_", "CLAUDE_ON_INCUS_"))} | {
        "HOME": home,
        "COI_CONTAINER_PREFIX": prefix,
        "COI_INCUS_PROJECT": project,
        "CLAUDE_ON_INCUS_IMAGE": image,
    }


def bench_shell(opts: argparse.Namespace, prefix: str) -> dict[str, float]:
    """Median seconds of `coi shell --background` and of the reference's sequence for it."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-home-") as home,
        tempfile.TemporaryDirectory(prefix="bench-ws-") as workspace,
    ):
        write_shell_home(home)
        env = clean_env(home, opts.project, f"{prefix}coi-", opts.shell_image)
        try:
            with coi_sides(
                opts, lambda coi, extra: coi_shell_background(coi, env | extra, workspace)
            ) as sides:
                sides["reference"] = lambda: reference_shell_background(
                    opts.project, opts.shell_image, workspace, home, prefix
                )
                return compare(sides, opts.runs, project=opts.project, prefix=prefix)
        finally:
            remove_all(opts.project, prefix)


def bench_run(opts: argparse.Namespace, prefix: str) -> dict[str, float]:
    """Median seconds of `coi run -- true` and of the reference's sequence for it."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-home-") as home,
        tempfile.TemporaryDirectory(prefix="bench-ws-") as workspace,
    ):
        env = clean_env(home, opts.project, prefix, opts.image)
        try:
            with coi_sides(opts, lambda coi, extra: coi_run(coi, env | extra, workspace)) as sides:
                sides["reference"] = lambda: reference_run(opts.project, opts.image, workspace, prefix)
                return compare(sides, opts.runs, project=opts.project, prefix=prefix)
        finally:
            remove_all(opts.project, prefix)


def report(command: str, image: str, runs: int, medians: dict[str, float]) -> None:
    print(f"image {image}, {runs} runs each, alternating, medians:")
    print(f"  {command:<26} {medians['coi']:7.3f} s")
    if "baseline" in medians:
        print(f"  baseline coi               {medians['baseline']:7.3f} s")
    print(f"  reference incus sequence   {medians['reference']:7.3f} s")
    print(f"  ratio coi / reference      {medians['coi'] / medians['reference']:7.2f}  (target <= 0.30)")
    if "baseline" in medians:
        print(f"  ratio coi / baseline       {medians['coi'] / medians['baseline']:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--image", default="coi-test-busybox")
    parser.add_argument("--project", default="", help="an existing project (default: a throwaway one)")
    parser.add_argument("--job", choices=("run", "shell", "both"), default="both")
    parser.add_argument("--shell-image", default="coi-test-debian", help="needs tmux (the shell job)")
    parser.add_argument("--coi", default=COI, help="the coi executable to time (default: this venv's)")
    parser.add_argument(
        "--baseline", default="", help="another coi executable (e.g. an older checkout's), timed alongside"
    )
    parser.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set for the baseline side only (e.g. COI_EGRESS_ATTACH=proxy-device with --baseline this coi)",
    )
    opts = parser.parse_args()
    prefix = f"bench{secrets.token_hex(2)}-"
    throwaway = not opts.project
    if throwaway:
        opts.project = f"bench-{secrets.token_hex(3)}"
        shared = ["-c", "features.images=false", "-c", "features.profiles=false"]
        subprocess.run(["incus", "project", "create", opts.project, *shared], capture_output=True, check=True)
    try:
        if opts.job in ("shell", "both"):
            report("coi shell --background", opts.shell_image, opts.runs, bench_shell(opts, prefix))
        if opts.job in ("run", "both"):
            report("coi run -- true", opts.image, opts.runs, bench_run(opts, prefix))
    finally:
        if throwaway:
            # Never `project delete --force` (it wipes the shared default profile on Incus 6.0).
            subprocess.run(["incus", "project", "delete", opts.project], capture_output=True, check=False)


if __name__ == "__main__":
    main()
