"""Help that reads like the original coi's: flags under `Flags:`, and real invocations under
`Examples:` for every command (`install` puts this on the whole command tree)."""

from __future__ import annotations

from collections.abc import Iterator

import asyncclick as click

# Keyed by the command's path below `coi` ("" is `coi` itself).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "coi                          # = coi shell: a session in the first free slot",
        "coi shell --background       # another slot, left running in tmux",
        "coi list                     # the sessions of every workspace",
        "coi shutdown --all           # save every session and end them all",
    ),
    "attach": (
        "coi attach                   # the only running session",
        "coi attach coi-1a2b3c4d-2    # by name",
        "coi attach --slot 2          # slot 2 of this workspace",
        "coi attach coi-1a2b3c4d-1 --bash",
    ),
    "build": ("coi build", "coi build --force", "coi build --allow-host pypi.org"),
    "build custom": (
        "coi build custom my-image --script ./setup.sh",
        "coi build custom py-image --script ./py.sh --base coi --force",
    ),
    "clean": ("coi clean", "coi clean --all --force", "coi clean --sessions"),
    "completion": (
        "source <(coi completion bash)",
        "coi completion fish > ~/.config/fish/completions/coi.fish",
    ),
    "container": ("coi container launch coi my-box", "coi container exec my-box -- uname -a"),
    "container delete": ("coi container delete my-box", "coi container delete my-box --force"),
    "container exec": (
        "coi container exec my-box -- ls /workspace",
        "coi container exec my-box --user 1000 --cwd /workspace -- make test",
        "coi container exec my-box --capture --format json -- cat /etc/os-release",
    ),
    "container exists": ("coi container exists my-box && echo yes",),
    "container launch": ("coi container launch coi my-box", "coi container launch coi scratch --ephemeral"),
    "container mount": (
        "coi container mount my-box data ~/data /data",
        "coi container mount my-box ws . /workspace --shift",
    ),
    "container running": ("coi container running my-box && echo running",),
    "container start": ("coi container start my-box",),
    "container stop": ("coi container stop my-box", "coi container stop my-box --force"),
    "egress": ("coi egress status", "coi egress stop"),
    "egress serve": ("coi egress serve",),
    "egress status": ("coi egress status", "coi egress status --format json"),
    "egress stop": ("coi egress stop",),
    "fork": (
        "coi fork coi-1a2b3c4d-1                 # one copy of the session, in a free slot",
        "coi fork coi-1a2b3c4d-1 -n 3 --worktree # three, each on its own branch coi/fork-<id>",
        "coi fork coi-1a2b3c4d-1 -n 2 --format json",
    ),
    "file": (
        "coi file push ./notes.md my-box:/workspace/notes.md",
        "coi file pull -r my-box:/var/log ./logs",
    ),
    "file pull": (
        "coi file pull my-box:/etc/hostname ./hostname",
        "coi file pull -r my-box:/home/code/.claude ./claude",
    ),
    "file push": (
        "coi file push ./script.sh my-box:/tmp/script.sh",
        "coi file push -r ./src my-box:/workspace/src",
    ),
    "image": ("coi image list", "coi image cleanup coi- --keep 2"),
    "image cleanup": ("coi image cleanup coi- --keep 3",),
    "image delete": ("coi image delete my-image",),
    "image exists": ("coi image exists coi && echo built",),
    "image list": ("coi image list", "coi image list --all --format json", "coi image list --prefix coi-"),
    "image publish": ("coi image publish my-box my-image --description 'with my tools'",),
    "images": ("coi images", "coi images --all"),
    "info": ("coi info", "coi info 1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
    "kill": ("coi kill coi-1a2b3c4d-1", "coi kill --all --force"),
    "list": ("coi list", "coi list --all", "coi list --format json", "coi list --tool gemini"),
    "network": ("coi network allow coi-1a2b3c4d-1 pypi.org", "coi network log --follow"),
    "network allow": (
        "coi network allow coi-1a2b3c4d-1 pypi.org",
        "coi network allow coi-1a2b3c4d-1 '*.githubusercontent.com'",
    ),
    "network deny": ("coi network deny coi-1a2b3c4d-1 pypi.org",),
    "network log": (
        "coi network log",
        "coi network log coi-1a2b3c4d-1 --follow",
        "coi network log --format json",
    ),
    "persist": ("coi persist coi-1a2b3c4d-1", "coi persist --all --force"),
    "run": (
        "coi run -- make test",
        "coi run --persistent -- npm install",
        "coi run -e CI=1 --mount ~/data:/data -- ./bench.sh",
    ),
    "shell": (
        "coi shell",
        "coi shell --slot 2",
        "coi shell --persistent",
        "coi shell --resume             # the latest saved session of this workspace",
        "coi shell --background -e DEBUG=1",
        "coi shell --tool codex --resume  # the latest saved codex session",
    ),
    "shutdown": (
        "coi shutdown coi-1a2b3c4d-1",
        "coi shutdown --all",
        "coi shutdown --all --timeout 30 --force",
    ),
    "top": ("coi top", "coi top --once --sort cpu", "coi top --format json"),
    "limit": ("coi limit coi-1a2b3c4d-1 --cpu 2 --memory 4GiB", "coi limit --all --memory none"),
    "events": (
        "coi events",
        "coi events --format json | jq -c 'select(.type != \"resync\")'",
        "coi events --all-remotes       # local and every remote at once",
    ),
    "wait": (
        "coi wait coi-1a2b3c4d-1 --state waiting",
        "coi wait coi-1a2b3c4d-1 coi-1a2b3c4d-2 --state idle --timeout 600",
    ),
    "pool": ("coi pool status", "coi pool fill", "coi pool drain"),
    "pool status": ("coi pool status", "coi pool status --format json"),
    "pool fill": ("coi pool fill", "coi pool fill --image coi --size 3"),
    "pool drain": ("coi pool drain",),
    "snapshot": ("coi snapshot create my-box before-upgrade", "coi snapshot list my-box"),
    "snapshot create": (
        "coi snapshot create my-box                  # named snap-YYYYMMDD-HHMMSS",
        "coi snapshot create coi-1a2b3c4d-1 before-refactor",
    ),
    "snapshot delete": ("coi snapshot delete my-box before-upgrade",),
    "snapshot list": ("coi snapshot list my-box", "coi snapshot list coi-1a2b3c4d-1 --format json"),
    "snapshot restore": (
        "coi snapshot restore my-box before-upgrade",
        "coi snapshot restore coi-1a2b3c4d-1 before-refactor --timeout 30",
    ),
    "tmux": ("coi tmux list", "coi tmux capture coi-1a2b3c4d-1"),
    "tmux capture": ("coi tmux capture coi-1a2b3c4d-1",),
    "tmux list": ("coi tmux list",),
    "tmux send": ("coi tmux send coi-1a2b3c4d-1 'npm test'",),
    "remote": ("coi remote list", "coi remote add lab https://lab.example:8443 --token TOKEN"),
    "remote add": (
        "coi remote add lab https://lab.example:8443 --token TOKEN",
        "coi --remote lab list",
    ),
    "remote list": ("coi remote list", "coi remote list --format json"),
    "remote remove": ("coi remote remove lab",),
    "remote switch": ("coi remote switch lab", "coi remote switch local"),
    "trust": ("coi trust", "coi trust --list"),
    "untrust": ("coi untrust", "coi untrust ~/src/app/.coi.toml"),
    "version": ("coi version",),
}


class CoiHelpFormatter(click.HelpFormatter):
    def write_heading(self, heading: str) -> None:
        # The original's users know the flag list as "Flags:".
        super().write_heading("Flags" if heading == "Options" else heading)


class CoiContext(click.Context):
    formatter_class = CoiHelpFormatter

    def get_help(self) -> str:
        text = super().get_help()
        examples = EXAMPLES.get(command_key(self))
        if not examples:
            return text
        lines = "\n".join(f"  {example}" for example in examples)
        return f"{text}\n\nExamples:\n{lines}"


def command_key(ctx: click.Context) -> str:
    """`ctx`'s command path without the program name: "container exec", or "" for the root."""
    names: list[str] = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def walk(command: click.Command, path: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every command of the tree below (and with) `command`, with its path (importing those the
    root loads on first use)."""
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None:
                yield from walk(sub, f"{path} {name}".strip())


def install(root: click.Command) -> None:
    """Give every command of the tree that is loaded the help context (flags heading, examples).

    Not through `walk`: that would import every command the root loads on first use, at every
    start of coi; the root installs it on each of those as it loads it."""
    stack = [root]
    while stack:
        command = stack.pop()
        command.context_class = CoiContext
        command.options_metavar = "[flags]"
        if isinstance(command, click.Group):
            stack.extend(command.commands.values())
