"""`coi fork`'s output: one line per fork (its worktree under it), or one JSON document."""

from __future__ import annotations

import json

from coi_async.cli.commands.fork import fork_json, fork_lines
from coi_async.orchestration.events import ItemResult
from coi_async.orchestration.sessions.fork import ForkReport
from coi_async.orchestration.sessions.forking import Fork

SOURCE = "coi-1a2b3c4d-1"


def report() -> ForkReport:
    made = ForkReport(source=SOURCE)
    made.forks.append(
        Fork(
            container="coi-1a2b3c4d-2",
            session_id="1b4e28ba-2fa1-41d2-883f-0016d3cca427",
            slot=2,
            forked_from=SOURCE,
            workspace="/w/fork",
            tmux="coi-coi-1a2b3c4d-2",
            conversation="c0ffee",
            worktree="/w/fork",
            branch="coi/fork-1b4e28ba",
        )
    )
    made.bulk.results.append(
        ItemResult(
            item="2c5f39cb-3ab2-42e3-994a-1127e4ddb538", outcome="failed", duration_s=0.1, error="boom"
        )
    )
    return made


def test_text_lines() -> None:
    assert fork_lines(report()) == [
        f"Forked {SOURCE} into coi-1a2b3c4d-2 (session 1b4e28ba-2fa1-41d2-883f-0016d3cca427)",
        "  Worktree: /w/fork (branch coi/fork-1b4e28ba)",
    ]


def test_json_document() -> None:
    doc = json.loads(fork_json(report()))
    assert doc["source"] == SOURCE
    [made] = doc["forks"]
    assert made == {
        "container": "coi-1a2b3c4d-2",
        "session_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
        "slot": 2,
        "forked_from": SOURCE,
        "workspace": "/w/fork",
        "tmux_session": "coi-coi-1a2b3c4d-2",
        "worktree": "/w/fork",
        "branch": "coi/fork-1b4e28ba",
    }
    assert doc["failed"] == [{"session_id": "2c5f39cb-3ab2-42e3-994a-1127e4ddb538", "error": "boom"}]
