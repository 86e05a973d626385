"""The workspace `shell` and `run` mount: a directory of this machine, or of a remote's server.

A remote cannot see this machine's directories, so over a remote the workspace is the path on
that server: `--workspace remote:PATH`, or the local path mapped by `[remotes.NAME]
workspace_root`. Anything else is refused before anything is created: coi never mounts a
directory that merely has the same name there. For the same reason no extra mount (`--mount`,
`[mounts]`, a profile's) is made over a remote.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from coi_async.errors import UsageError

if TYPE_CHECKING:
    from coi_async.cli.app import App
    from coi_async.config import Config, Mount


def session_workspace(
    app: App, workspace: str, mounts: tuple[str, ...], config: Config
) -> tuple[str, tuple[Mount, ...]]:
    """The absolute workspace (checked) and the extra mounts (validated, host dirs made)."""
    from coi_async.naming import absolute_workspace
    from coi_async.orchestration.sessions.launch_request import check_workspace, prepare_mounts
    from coi_async.remotes import REMOTE_PATH_PREFIX, remote_workspace

    if not app.is_remote():
        if workspace.startswith(REMOTE_PATH_PREFIX):
            raise UsageError(
                f"--workspace {workspace} names a path on a remote's server: give the remote too "
                "(coi --remote NAME ...)"
            )
        ws = absolute_workspace(workspace, os.getcwd())
        check_workspace(ws)
        return ws, prepare_mounts(config, mounts)
    name = app.remote_name()
    ws = remote_workspace(
        workspace,
        remote=name,
        root=app.remote_workspace_root(),
        home=os.path.expanduser("~"),
        cwd=os.getcwd(),
    )
    given = [*mounts, *(f"{m.host}:{m.container}" for m in config.mounts)]
    if given:
        raise UsageError(
            f"mount {given[0]} is a directory of this machine, which remote '{name}' cannot see: "
            "coi makes no extra mounts over a remote"
        )
    return ws, ()
