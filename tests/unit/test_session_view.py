"""The words of the session flows: every `Note` kind they emit has its sentence, byte for byte
the line the reference printed (cli-contract.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coi_async.cli import session_view
from coi_async.cli.commands.run import exit_status
from coi_async.orchestration.events import Note, StepStarted

SESSIONS = Path(__file__).parents[2] / "src" / "coi_async" / "orchestration" / "sessions"
C = "coi-0123abcd-1"
ID = "6f1c0a52-3b9e-4c43-9a0e-0d1f2e3a4b5c"
STARTING = f"\nStarting session...\nSession ID: {ID}\nContainer: {C}\nWorkspace: /w\n"


def _starting(mode: str, resume: str, *, item: str = "") -> Note:
    """The `session.starting` note of session ID in container C for the workspace /w."""
    values = {"session_id": ID, "container": C, "workspace": "/w", "mode": mode, "resume": resume}
    return Note(kind="session.starting", item=item, values=values)


def test_every_kind_the_flows_emit_has_words() -> None:
    emitted = set()
    for path in SESSIONS.glob("*.py"):
        emitted |= set(re.findall(r'note\(\s*emit,\s*"([a-z.-]+)"', path.read_text()))
        emitted |= set(re.findall(r'"(cleanup\.[a-z-]+)" if', path.read_text()))
    assert len(emitted) > 30, emitted
    assert emitted <= session_view.KINDS, emitted - session_view.KINDS


@pytest.mark.parametrize(
    ("note", "text"),
    [
        (Note(kind="resume.auto-detected", values={"session_id": ID}), f"Auto-detected session: {ID}"),
        (Note(kind="resume.resuming", values={"session_id": ID}), f"Resuming session: {ID}"),
        (Note(kind="resume.inherited-persistent"), "Inherited persistent mode from session"),
        (Note(kind="setup.started", values={"session_id": ID}), f"Setting up session {ID}..."),
        (Note(kind="setup.slot-allocated", item=C, values={"slot": "3"}), "Auto-allocated slot 3"),
        (
            Note(kind="launch.slot-occupied", values={"slot": "1", "instead": "2"}),
            "Slot 1 is occupied, using slot 2 instead",
        ),
        (Note(kind="launch.restarting", item=C), "Restarting existing persistent container..."),
        (Note(kind="launch.reusing-running", item=C), "Container already running, reusing..."),
        (
            Note(kind="launch.idmap-fallback", item=C, values={"plan": "shift", "error": "no"}),
            "shift is not usable here (no); trying the next way to map file ownership",
        ),
        (
            Note(kind="credentials.missing", values={"path": "/h/.claude/.credentials.json"}),
            "[setup] No credentials found at /h/.claude/.credentials.json; the tool may ask you to log in",
        ),
        (
            Note(kind="credentials.host-not-json", values={"file": "~/.claude.json"}),
            "[setup] Warning: ~/.claude.json is not a JSON object; copied as it is, without the sandbox settings",
        ),
        (
            Note(kind="credentials.session-not-json", values={"file": "~/.claude.json"}),
            "[setup] Warning: the session's ~/.claude.json was not a JSON object; replaced by the host's",
        ),
        (Note(kind="interrupted", values={"signal": "2"}), "\nReceived interrupt signal, cleaning up..."),
        (_starting("interactive", "", item=C), f"{STARTING}Mode: Interactive (tmux)"),
        (
            _starting("direct", "restored"),
            f"{STARTING}Mode: Direct (no tmux)\nResume mode: Restored conversation (auto-detect)",
        ),
        (
            _starting("background", "persistent"),
            f"{STARTING}Mode: Background (tmux)\nResume mode: Persistent session",
        ),
        (
            Note(kind="background.created", item=C, values={"tmux": f"coi-{C}"}),
            f"Created background tmux session: coi-{C}",
        ),
        (
            Note(kind="background.sent", item=C, values={"tmux": f"coi-{C}"}),
            f"Sent command to existing tmux session: coi-{C}",
        ),
        (
            Note(kind="background.usage", item=C),
            f"Use 'coi tmux capture {C}' to view output\nUse 'coi tmux send {C} \"<command>\"' to send commands",
        ),
        (
            Note(kind="session.exec-lost", item=C),
            "[session] Warning: incusd lost track of the command (exit -1)",
        ),
        (Note(kind="cleanup.started", item=C), "\nCleaning up session..."),
        (Note(kind="save.started", item=C, values={"path": "/s/x"}), "[cleanup] Saving session data to /s/x"),
        (Note(kind="save.done", item=C), "[cleanup] Session data saved successfully"),
        (
            Note(kind="save.nothing", item=C, values={"config_dir": ".claude"}),
            "[cleanup] No .claude directory found in container",
        ),
        (
            Note(kind="save.timed-out", item=C, values={"seconds": "60"}),
            "[cleanup] Warning: saving session data took over 60s; gave up",
        ),
        (
            Note(kind="save.failed", item=C, values={"error": "could not save session data: boom"}),
            "[cleanup] Warning: could not save session data: boom",
        ),
        (
            Note(kind="save.skipped", item=C, values={"names": "a, b"}),
            "[cleanup] Left out (special files, or names or links leading outside): a, b",
        ),
        (
            Note(kind="save.retry-stopped", item=C),
            "[cleanup] The container stopped meanwhile; saving from its filesystem",
        ),
        (
            Note(kind="cleanup.kept-running", item=C),
            (
                "[cleanup] Container kept running - use 'coi attach' to reconnect, 'coi shutdown' to stop, "
                "or 'coi kill' to force stop"
            ),
        ),
        (Note(kind="cleanup.kept-stopped", item=C), "[cleanup] Container was stopped but kept for reuse"),
        (
            Note(kind="cleanup.kept-unsaved", item=C, values={"session_id": ID}),
            (
                f"[cleanup] Container {C} kept: its session data could not be saved. "
                f"Retry with 'coi shell --resume={ID}' or copy it out with 'coi file pull'"
            ),
        ),
        (Note(kind="cleanup.removing", item=C), "[cleanup] Removing container..."),
        (Note(kind="cleanup.removing-stopped", item=C), "[cleanup] Container was stopped, removing..."),
        (
            Note(kind="cleanup.removed", item=C),
            "[cleanup] Container removed (session data saved for --resume)",
        ),
        (Note(kind="cleanup.already-removed", item=C), "[cleanup] Container was already removed"),
        (
            Note(kind="cleanup.no-answer", item=C),
            f"[cleanup] Warning: incusd did not answer about {C}; it may be left over",
        ),
        (Note(kind="cleanup.failed", item=C, values={"error": "x"}), "[cleanup] Warning: x"),
        (Note(kind="setup.restoring", item=C), "[setup] Restoring session data..."),
        (Note(kind="setup.reusing-running", item=C), f"[setup] Session container {C} is running; reusing it"),
        (
            Note(kind="setup.leftover", item=C),
            f"Found stopped leftover container {C} of this session, saving and deleting...",
        ),
        (
            Note(kind="run.launching", item=C, values={"image": "coi"}),
            f"Launching container {C} from image coi...",
        ),
        (Note(kind="run.cleaning-up", item=C), f"Cleaning up container {C}..."),
        (Note(kind="run.stopping", item=C), f"Stopping persistent container {C}..."),
    ],
)
def test_sentences_are_the_contract_lines(note: Note, text: str) -> None:
    assert session_view.sentence(note) == text


def test_values_are_not_formatted_twice_and_other_events_are_silent() -> None:
    assert session_view.sentence(Note(kind="cleanup.failed", values={"error": "{item} {x}"})) == (
        "[cleanup] Warning: {item} {x}"
    )
    assert session_view.sentence(StepStarted(item=C, step="saving")) is None
    assert session_view.sentence(Note(kind="no.such-kind", item=C)) == f"no.such-kind: item={C}"


def test_exit_status() -> None:
    assert exit_status(0) == "Command completed successfully"
    assert exit_status(3) == "Command exited with code 3"
