"""A coi client of the test cluster: its own HOME with the cluster as the remote `clu`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.cluster_harness import Cluster
from tests.coi_cli import Run, coi_env, coi_sync

REMOTE = "clu"
PREFIX = "h13c-"


@dataclass
class Client:
    """A coi with its own HOME that has the cluster as the remote `clu`, and a workspace."""

    cluster: Cluster
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def workspace(self) -> Path:
        return self.root / "ws"

    def env(self, **extra: str) -> dict[str, str]:
        return coi_env(home=self.home, prefix=PREFIX, drop=("COI_",), TERM="xterm", **extra)

    def run(self, *args: str, **extra: str) -> Run:
        return coi_sync(*args, env=self.env(**extra), cwd=self.workspace, timeout=180)

    def over(self, *args: str, **extra: str) -> Run:
        """`coi --remote clu ARGS`, a session's workspace being this one on the servers."""
        return self.run("--remote", REMOTE, *args, **extra)

    def ws(self) -> tuple[str, str]:
        return ("-w", f"remote:{self.workspace}")

    def placed(self) -> dict[str, str]:
        """coi's containers and their members, as `coi list --format json` tells."""
        listed = self.over("list", "--format", "json")
        assert listed.code == 0, listed.stderr
        return {c["name"]: c.get("location", "") for c in json.loads(listed.stdout)["active_containers"]}

    def sessions(self) -> list[Path]:
        store = self.home / ".coi" / "sessions-claude"
        return list(store.iterdir()) if store.is_dir() else []

    def latest_session(self, container: str) -> Path:
        """The latest saved session of `container` (the package's tests reuse workspace and
        slots, so one name can have several)."""
        return max(
            (
                p
                for p in self.sessions()
                if json.loads((p / "metadata.json").read_text())["container_name"] == container
            ),
            key=lambda p: p.stat().st_mtime,
        )

    def locations(self) -> dict[str, str]:
        """Every instance of the cluster and its member, as incusd tells."""
        listed = json.loads(self.cluster.incus("query", "/1.0/instances?recursion=1"))
        return {i["name"]: i["location"] for i in listed}
