"""What a `coi shell` asks for, and how an interactive session ended."""

from __future__ import annotations

import enum

import msgspec

from coi_async.config import Mount


class ShellRequest(msgspec.Struct, frozen=True, kw_only=True):
    workspace: str  # absolute
    slot: int = 0  # 0: the first free one
    persistent: bool | None = None  # None: from the config, or inherited when resuming
    resume: str | None = None  # "auto" (latest of this workspace) or a session id
    env: dict[str, str] = {}
    mounts: tuple[Mount, ...] = ()  # config and command line, combined and validated
    background: bool = False
    debug: bool = False  # bash instead of the tool
    use_tmux: bool = True
    term: str | None = None
    host_uid: int = 1000
    host_gid: int = 1000
    # Where the host user's tool credentials and settings are read from ("": copy none).
    host_home: str = ""
    # COI_USE_DUMMY=1 in the host's environment: the tool is the `dummy` test stub.
    use_dummy: bool = False
    target: str = ""  # the cluster member a new container goes to ("": [placement] policy)

    @property
    def dummy(self) -> bool:
        """Whether the session runs `dummy` instead of the tool (COI_USE_DUMMY=1, host or -e)."""
        return self.use_dummy or self.env.get("COI_USE_DUMMY") == "1"


class Outcome(enum.Enum):
    DETACHED = "detached"  # the tmux session lives on; the container keeps running
    ENDED = "ended"  # the tool and its shell exited: the session is over
    STOPPED = "stopped"  # the container stopped (poweroff inside)
    INTERRUPTED = "interrupted"  # a signal to coi ended the session
    FAILED = "failed"  # setup failed
    BACKGROUND = "background"  # started detached on purpose; nothing to clean up
    NO_TMUX = "no-tmux"  # attach found no session to attach to
