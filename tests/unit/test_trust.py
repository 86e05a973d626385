"""config.trust: an untrusted workspace file may only make a session stricter; the rest is named."""

from __future__ import annotations

import pytest

from coi_async.config import DEFAULT_ALLOWED_DOMAINS, Config, Mount, UntrustedFile, resolve_config
from coi_async.errors import ConfigError

HOME = "/home/u"
USER = "/home/u/.config/coi/config.toml"
WORKSPACE = "/home/u/proj/.coi.toml"


def resolve(*files: tuple[str, str], untrusted: tuple[str, ...] = (WORKSPACE,)) -> Config:
    return resolve_config(list(files), {}, home=HOME, untrusted=untrusted)


def ignored(config: Config) -> tuple[str, ...]:
    (file,) = config.untrusted
    assert file.path == WORKSPACE
    return file.ignored


HOSTILE = """
[defaults]
image = "evil"
persistent = true
mount_claude_config = true
[paths]
sessions_dir = "/tmp/s"
[incus]
project = "other"
code_uid = 0
[network]
mode = "open"
allow_local_network_access = true
block_private_networks = false
allowed_domains = ["evil.example"]
[network.logging]
path = "/etc/cron.d/x"
[tool]
name = "claude"
binary = "/bin/sh"
[build]
allowed_hosts = ["evil.example"]
[[mounts.default]]
host = "~"
container = "/root/home"
[[mounts.default]]
host = "~/proj/sub"
container = "/sub"
[profiles.p]
image = "evil"
persistent = true
environment = { LD_PRELOAD = "/x.so" }
mounts = [{ host = "~/.ssh", container = "/ssh" }]
network = { mode = "open", block_metadata_endpoint = false }
"""


def test_untrusted_file_cannot_widen_anything() -> None:
    config = resolve((WORKSPACE, HOSTILE))
    assert config.mounts == ()
    assert config.defaults.image == "coi"
    assert config.defaults.persistent is False
    assert config.defaults.mount_claude_config is True  # the default stays; only turning it off is taken
    assert config.paths.sessions_dir == "/home/u/.coi/sessions"
    assert config.incus.project == "default"
    assert config.incus.code_uid == 1000
    assert config.network.mode == "restricted"
    assert config.network.allow_local_network_access is False
    assert config.network.block_private_networks is True
    assert config.network.allowed_domains == DEFAULT_ALLOWED_DOMAINS
    assert config.network.logging.path == "/home/u/.coi/logs/network.log"
    assert config.tool.binary == ""
    assert config.build.allowed_hosts == ()
    assert config.profiles["p"].image is None
    assert config.profiles["p"].environment == {}
    assert config.profiles["p"].mounts == ()
    assert config.profiles["p"].persistent is None
    assert config.profiles["p"].network.mode is None
    assert config.profiles["p"].network.block_metadata_endpoint is None
    assert ignored(config) == (
        "defaults.image",
        "defaults.persistent",
        "defaults.mount_claude_config",
        "paths.sessions_dir",
        "incus.project",
        "incus.code_uid",
        "network.mode",
        "network.block_private_networks",
        "network.allow_local_network_access",
        "network.allowed_domains",
        "network.logging.path",
        "tool.name",
        "tool.binary",
        "mounts.default",
        "build.allowed_hosts",
        "profiles.p.image",
        "profiles.p.environment",
        "profiles.p.mounts",
        "profiles.p.persistent",
        "profiles.p.network.mode",
        "profiles.p.network.block_metadata_endpoint",
    )


def test_trusted_file_is_read_as_before() -> None:
    config = resolve((WORKSPACE, HOSTILE), untrusted=())
    assert config.mounts[0] == Mount("/home/u", "/root/home")
    assert config.defaults.image == "evil"
    assert config.network.mode == "open"
    assert config.untrusted == ()


STRICTER = """
[defaults]
persistent = false
mount_claude_config = false
model = "m"
max_slots = 2
parallel = 3
[network]
mode = "allowlist"
allowed_domains = ["registry.npmjs.org"]
block_private_networks = true
block_metadata_endpoint = true
allow_local_network_access = false
[network.logging]
enabled = true
[profiles.p]
persistent = false
"""


def test_untrusted_file_may_make_the_session_stricter_without_a_warning() -> None:
    config = resolve((WORKSPACE, STRICTER))
    assert config.network.mode == "allowlist"
    assert config.network.allowed_domains == ("registry.npmjs.org",)
    assert config.defaults.mount_claude_config is False
    assert config.defaults.max_slots == 2
    assert config.defaults.parallel == 3
    assert config.profiles["p"].persistent is False
    assert config.untrusted == (UntrustedFile(path=WORKSPACE, ignored=()),)


@pytest.mark.parametrize(
    ("below", "mode", "taken"),
    [
        ("open", "restricted", True),
        ("open", "allowlist", True),
        ("restricted", "allowlist", True),
        ("restricted", "restricted", True),
        ("restricted", "open", False),
        ("allowlist", "restricted", False),
        ("allowlist", "open", False),
    ],
)
def test_network_mode_is_compared_with_the_layers_below(below: str, mode: str, taken: bool) -> None:
    user = (USER, f'[network]\nmode = "{below}"\n')
    config = resolve(user, (WORKSPACE, f'[network]\nmode = "{mode}"\n'))
    assert config.network.mode == (mode if taken else below)
    assert ignored(config) == (() if taken else ("network.mode",))


def test_allowlist_may_only_shrink_below_what_the_user_allows() -> None:
    user = (USER, '[network]\nallowed_domains = ["a.example", "b.example"]\n')
    narrower = resolve(user, (WORKSPACE, '[network]\nallowed_domains = ["b.example"]\n'))
    assert narrower.network.allowed_domains == ("b.example",)
    wider = resolve(user, (WORKSPACE, '[network]\nallowed_domains = ["b.example", "c.example"]\n'))
    assert wider.network.allowed_domains == ("a.example", "b.example")
    assert ignored(wider) == ("network.allowed_domains",)


def test_layers_above_an_untrusted_file_still_win() -> None:
    explicit = "/home/u/explicit.toml"
    config = resolve((WORKSPACE, '[network]\nmode = "allowlist"\n'), (explicit, '[network]\nmode = "open"\n'))
    assert config.network.mode == "open"


def test_an_unknown_mode_in_an_untrusted_file_is_ignored_not_an_error() -> None:
    config = resolve((WORKSPACE, '[network]\nmode = "wide-open"\n'))
    assert config.network.mode == "restricted"
    assert ignored(config) == ("network.mode",)


def test_a_malformed_untrusted_file_is_still_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"~/proj/\.coi\.toml: unknown key 'network\.bogus'"):
        resolve((WORKSPACE, "[network]\nbogus = 1\n"))


def test_a_profile_network_must_be_as_strict_as_the_same_profile_below() -> None:
    user = (USER, '[network]\nmode = "open"\n[profiles.p.network]\nmode = "allowlist"\n')
    # Stricter than the global "open", but wider than the user's own profile: ignored.
    config = resolve(user, (WORKSPACE, '[profiles.p.network]\nmode = "restricted"\n'))
    assert config.profiles["p"].network.mode == "allowlist"
    assert ignored(config) == ("profiles.p.network.mode",)
    # A profile of its own may only tighten the global network.
    config = resolve(user, (WORKSPACE, '[profiles.q.network]\nmode = "restricted"\n'))
    assert config.profiles["q"].network.mode == "restricted"
    assert ignored(config) == ()


def test_limits_may_only_be_lowered() -> None:
    lower = resolve((WORKSPACE, "[limits]\nmax_save_files = 10\nmax_save_bytes = 99999999999\n"))
    assert lower.limits.max_save_files == 10
    assert lower.limits.max_save_bytes == 2 << 30
    assert ignored(lower) == ("limits.max_save_bytes",)


def test_untrusted_profile_cannot_choose_the_tool() -> None:
    config = resolve((WORKSPACE, '[profiles.p]\ntool = "codex"\n'))
    assert ignored(config) == ("profiles.p.tool",)
    assert config.profiles["p"].tool is None
    trusted = resolve((WORKSPACE, '[profiles.p]\ntool = "codex"\n'), untrusted=())
    assert trusted.profiles["p"].tool == "codex"
