"""The warm pool's pure parts: `[pool] size`, member names, which storage gets a pool."""

from __future__ import annotations

import pytest

from coi_async.config import resolve_config
from coi_async.errors import ConfigError
from coi_async.incus.models import Instance
from coi_async.naming import SessionName, is_session_listed
from coi_async.orchestration.pool.members import (
    AUTO_SIZE,
    KEY_POOL,
    KEY_POOL_IMAGE,
    KEY_POOL_READY,
    is_member,
    member_name,
    ready_of,
    size_for,
)

USER = "/home/u/.config/coi/config.toml"


def size(text: str) -> int | None:
    return resolve_config([(USER, text)], {}, home="/home/u").pool.size


def test_pool_size_setting() -> None:
    assert size("") is None  # auto
    assert size('[pool]\nsize = "auto"\n') is None
    assert size("[pool]\nsize = 0\n") == 0
    assert size("[pool]\nsize = 16\n") == 16


@pytest.mark.parametrize("value", ["-1", "17", '"big"', "true", "1.5", "[2]"])
def test_bad_pool_size_names_file_and_key(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        size(f"[pool]\nsize = {value}\n")
    assert str(caught.value).startswith("~/.config/coi/config.toml:")
    assert "pool.size" in str(caught.value)


def test_unknown_pool_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'pool\.count'"):
        size("[pool]\ncount = 2\n")


def test_auto_is_on_for_dir_only() -> None:
    assert size_for(None, "dir") == AUTO_SIZE
    for driver in ("btrfs", "zfs", "lvm", "ceph", ""):
        assert size_for(None, driver) == 0
    assert size_for(3, "btrfs") == 3
    assert size_for(0, "dir") == 0


@pytest.mark.parametrize("prefix", ["coi-", "h3b-", "x" * 51])
def test_member_names_are_no_session_names(prefix: str) -> None:
    name = member_name(prefix, "ab12cd34ef56" + "0" * 52)
    assert len(name) <= 63
    assert name.startswith(f"{prefix}pool-")
    assert SessionName.parse(name, prefix) is None
    assert not is_session_listed(name, prefix)
    assert is_session_listed(f"{prefix}abcdef12-1", prefix)
    assert member_name(prefix, "ab12") != member_name(prefix, "ab12")


def test_only_complete_stopped_members_of_the_image_are_taken() -> None:
    def member(name: str, fingerprint: str, *, ready: bool = True, status: str = "Stopped") -> Instance:
        config = {KEY_POOL: "true", KEY_POOL_IMAGE: fingerprint}
        if ready:
            config[KEY_POOL_READY] = "true"
        return Instance(name=name, status=status, config=config)

    found = [
        member("coi-pool-a-1", "aaa"),
        member("coi-pool-a-2", "aaa", ready=False),  # being made
        member("coi-pool-a-3", "aaa", status="Running"),  # started by someone: no longer clean
        member("coi-pool-b-1", "bbb"),  # another image (or an older build)
    ]
    assert [m.name for m in ready_of(found, "aaa")] == ["coi-pool-a-1"]
    assert is_member(found[0], "coi-")
    assert not is_member(Instance(name="coi-pool-x-1"), "coi-"), "no pool key: not ours"
