"""naming: container names, hashes, prefixes, tmux sessions."""

from __future__ import annotations

import hashlib
import os

import pytest

from coi_async.errors import ConfigError
from coi_async.naming import (
    SessionName,
    absolute_workspace,
    container_prefix,
    tmux_session,
    workspace_hash,
)


def test_hash_matches_the_reference_test_helper() -> None:
    ws = "/home/u/proj"
    assert workspace_hash(ws) == hashlib.sha256(os.path.abspath(ws).encode()).hexdigest()[:8]
    assert len(workspace_hash(ws)) == 8


def test_absolute_workspace_does_not_resolve_symlinks() -> None:
    assert absolute_workspace(".", "/a/link") == "/a/link"
    assert absolute_workspace("../b/./c", "/a/x") == "/a/b/c"
    assert absolute_workspace("/abs", "/ignored") == "/abs"


def test_name_round_trip() -> None:
    name = SessionName.for_workspace("/home/u/proj", 3, prefix="coi-")
    text = str(name)
    assert text == f"coi-{workspace_hash('/home/u/proj')}-3"
    assert SessionName.parse(text, "coi-") == name
    assert name.belongs_to("/home/u/proj")
    assert not name.belongs_to("/home/u/other")
    assert str(name.with_slot(7)).endswith("-7")


@pytest.mark.parametrize(
    "foreign",
    [
        "coi-1234567-1",
        "coi-123456789-1",
        "coi-1234abcd-0",
        "coi-1234abcd-x",
        "xcoi-1234abcd-1",
        "coi-1234ABCD-1",
        "coi-1234abcd-1-2",
        "other",
        "coi-1234abcd-",
    ],
)
def test_foreign_names_parse_to_none(foreign: str) -> None:
    assert SessionName.parse(foreign, "coi-") is None


def test_prefix_with_regex_characters_is_literal() -> None:
    assert SessionName.parse("h3a-1234abcd-2", "h3a-") == SessionName("h3a-", "1234abcd", 2)
    assert SessionName.parse("coi-1234abcd-2", "h3a-") is None


def test_container_prefix_from_env() -> None:
    assert container_prefix({}) == "coi-"
    assert container_prefix({"COI_CONTAINER_PREFIX": ""}) == "coi-"
    assert container_prefix({"COI_CONTAINER_PREFIX": "h3a-"}) == "h3a-"
    with pytest.raises(ConfigError, match="COI_CONTAINER_PREFIX"):
        container_prefix({"COI_CONTAINER_PREFIX": "bad prefix/"})


def test_tmux_session_keeps_the_hardcoded_prefix() -> None:
    assert tmux_session("coi-1a2b3c4d-1") == "coi-coi-1a2b3c4d-1"
    assert tmux_session("h3a-1a2b3c4d-1") == "coi-h3a-1a2b3c4d-1"
