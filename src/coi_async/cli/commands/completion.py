"""`coi completion bash|zsh|fish`: print a shell completion script.

The script calls `coi` back with `_COI_COMPLETE` set, and click answers with the candidates, so
completion always matches the installed commands and flags.
"""

from __future__ import annotations

import asyncclick as click

SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
async def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash:  source <(coi completion bash)        # or save it in ~/.local/share/bash-completion/completions/coi
    zsh:   source <(coi completion zsh)         # bash-style completion works after compinit
    fish:  coi completion fish > ~/.config/fish/completions/coi.fish
    """
    from asyncclick.shell_completion import get_completion_class

    root = ctx.find_root()
    cls = get_completion_class(shell)
    if cls is None:  # the Choice above lets only known shells through
        raise click.BadParameter(f"unsupported shell {shell!r}")
    prog = root.info_name or "coi"
    complete_var = f"_{prog.replace('-', '_').upper()}_COMPLETE"
    script = cls(root.command, {}, prog, complete_var).source()
    click.echo(with_header(script, shell, prog))


def with_header(script: str, shell: str, prog: str) -> str:
    """The script under a comment that names the shell and the program. zsh's `#compdef` must
    stay the first line, so there the comment comes second."""
    header = f"# {shell} completion for {prog}"
    first, _, rest = script.partition("\n")
    if first.startswith("#compdef"):
        return f"{first}\n{header}\n{rest}"
    return f"{header}\n{script}"
