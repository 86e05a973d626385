"""config: layering, unset vs false, validation with file and key named."""

from __future__ import annotations

import pytest

from coi_async.config import (
    DEFAULT_ALLOWED_DOMAINS,
    Config,
    Mount,
    apply_flags,
    config_paths,
    resolve_config,
)
from coi_async.errors import ConfigError

HOME = "/home/u"
USER = "/home/u/.config/coi/config.toml"


def resolve(*files: tuple[str, str], env: dict[str, str] | None = None, profile: str | None = None) -> Config:
    return resolve_config(list(files), env or {}, home=HOME, profile=profile)


def test_builtin_defaults() -> None:
    c = resolve()
    assert c.defaults.image == "coi"
    assert c.defaults.persistent is False
    assert c.defaults.max_slots == 10
    assert c.defaults.parallel == 32
    assert c.paths.sessions_dir == "/home/u/.coi/sessions"
    assert c.sessions_dir == "/home/u/.coi/sessions-claude"
    assert c.paths.storage_dir == "/home/u/.coi/storage"
    assert c.incus.project == "default"
    assert c.incus.code_uid == 1000
    assert c.incus.code_user == "code"
    assert c.network.mode == "restricted"
    assert c.network.block_private_networks is True
    assert c.network.allowed_domains == DEFAULT_ALLOWED_DOMAINS
    assert c.network.logging.path == "/home/u/.coi/logs/network.log"
    assert c.tool.name == "claude"
    assert c.container_prefix == "coi-"
    assert c.mounts == ()


def test_every_key_takes_effect() -> None:
    text = """
[defaults]
image = "myimg"
persistent = true
model = "m"
max_slots = 3
parallel = 2
mount_claude_config = false
[paths]
sessions_dir = "~/s/sessions"
storage_dir = "/st"
logs_dir = "~/logs"
[incus]
project = "coi"
group = "g"
code_uid = 1234
code_user = "dev"
disable_shift = true
[network]
mode = "allowlist"
block_private_networks = false
block_metadata_endpoint = false
allow_local_network_access = true
allowed_domains = ["example.org"]
refresh_interval_minutes = 5
[network.logging]
enabled = false
path = "/var/log/n.log"
[tool]
name = "claude"
binary = "claude-dev"
[[mounts.default]]
host = "~/data"
container = "/data"
[build]
base = "coi"
allowed_hosts = ["deb.debian.org"]
[profiles.rust]
image = "coi-rust"
environment = { RUST_BACKTRACE = "1" }
persistent = false
mounts = [{ host = "/cargo", container = "/home/code/.cargo" }]
"""
    c = resolve((USER, text))
    assert (c.defaults.image, c.defaults.persistent, c.defaults.model) == ("myimg", True, "m")
    assert (c.defaults.max_slots, c.defaults.parallel, c.defaults.mount_claude_config) == (3, 2, False)
    assert c.paths.sessions_dir == "/home/u/s/sessions"
    assert c.sessions_dir == "/home/u/s/sessions-claude"
    assert c.paths.storage_dir == "/st"
    assert c.paths.logs_dir == "/home/u/logs"
    assert (c.incus.project, c.incus.group, c.incus.code_uid, c.incus.code_user) == ("coi", "g", 1234, "dev")
    assert c.incus.disable_shift is True
    n = c.network
    assert (n.mode, n.block_private_networks, n.block_metadata_endpoint) == ("allowlist", False, False)
    assert n.allow_local_network_access is True
    assert n.allowed_domains == ("example.org",)
    assert n.refresh_interval_minutes == 5
    assert (n.logging.enabled, n.logging.path) == (False, "/var/log/n.log")
    assert c.tool.binary == "claude-dev"
    assert c.mounts == (Mount("/home/u/data", "/data"),)
    assert (c.build.base, c.build.allowed_hosts) == ("coi", ("deb.debian.org",))
    assert c.sources == (USER,)
    r = resolve((USER, text), profile="rust")
    assert r.defaults.image == "coi-rust"
    assert r.defaults.persistent is False
    assert r.environment == {"RUST_BACKTRACE": "1"}
    assert r.profile == "rust"
    assert r.mounts == (Mount("/home/u/data", "/data"), Mount("/cargo", "/home/code/.cargo"))


def test_unset_is_not_false() -> None:
    system = (
        "/etc/coi/config.toml",
        "[network]\nblock_private_networks = false\n[defaults]\npersistent = true\n",
    )
    user = (USER, '[network]\nmode = "restricted"\n')
    c = resolve(system, user)
    assert c.network.block_private_networks is False  # the user file said nothing about it
    assert c.network.block_metadata_endpoint is True
    assert c.defaults.persistent is True


def test_later_files_win_and_mounts_accumulate() -> None:
    a = (
        "/etc/coi/config.toml",
        '[defaults]\nimage = "a"\n[[mounts.default]]\nhost = "/x"\ncontainer = "/x"\n',
    )
    b = (USER, '[defaults]\nimage = "b"\n[[mounts.default]]\nhost = "/y"\ncontainer = "/y"\n')
    c = resolve(a, b)
    assert c.defaults.image == "b"
    assert [m.container for m in c.mounts] == ["/x", "/y"]


def test_profiles_merge_across_files() -> None:
    a = ("/etc/coi/config.toml", '[profiles.p]\nimage = "i"\nenvironment = { A = "1", B = "1" }\n')
    b = (USER, '[profiles.p]\nenvironment = { B = "2" }\npersistent = true\n')
    c = resolve(a, b, profile="p")
    assert c.defaults.image == "i"
    assert c.defaults.persistent is True
    assert c.environment == {"A": "1", "B": "2"}


def test_profile_without_persistent_keeps_it() -> None:
    c = resolve((USER, '[defaults]\npersistent = true\n[profiles.p]\nimage = "x"\n'), profile="p")
    assert c.defaults.persistent is True


def test_environment_layer_over_files_and_profile_over_environment() -> None:
    env = {
        "CLAUDE_ON_INCUS_IMAGE": "envimg",
        "CLAUDE_ON_INCUS_SESSIONS_DIR": "/env/sessions",
        "CLAUDE_ON_INCUS_STORAGE_DIR": "/env/storage",
        "CLAUDE_ON_INCUS_PERSISTENT": "1",
        "COI_CONTAINER_PREFIX": "h3a-",
    }
    c = resolve((USER, '[defaults]\nimage = "fileimg"\n[profiles.p]\nimage = "profimg"\n'), env=env)
    assert c.defaults.image == "envimg"
    assert c.defaults.persistent is True
    assert c.paths.sessions_dir == "/env/sessions"
    assert c.sessions_dir == "/env/sessions-claude"
    assert c.paths.storage_dir == "/env/storage"
    assert c.container_prefix == "h3a-"
    assert (
        resolve((USER, '[profiles.p]\nimage = "profimg"\n'), env=env, profile="p").defaults.image == "profimg"
    )
    off = resolve((USER, "[defaults]\npersistent = true\n"), env={"CLAUDE_ON_INCUS_PERSISTENT": "false"})
    assert off.defaults.persistent is False


def test_flags_are_the_last_layer() -> None:
    c = resolve((USER, '[defaults]\nimage = "fileimg"\npersistent = true\n'))
    assert apply_flags(c, image="flagimg").defaults.image == "flagimg"
    assert apply_flags(c, persistent=False).defaults.persistent is False
    assert apply_flags(c).defaults == c.defaults


def test_old_claude_uid_name_sets_code_uid() -> None:
    assert resolve((USER, "[incus]\nclaude_uid = 1001\n")).incus.code_uid == 1001


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[defaults]\nimgae = 'x'\n", "~/.config/coi/config.toml: unknown key 'defaults.imgae'"),
        ("[defualts]\nimage = 'x'\n", "~/.config/coi/config.toml: unknown key 'defualts'"),
        ("[network.logging]\nenable = true\n", "unknown key 'network.logging.enable'"),
        ("[profiles.rust]\nimag = 'x'\n", "unknown key 'profiles.rust.imag'"),
        (
            "[[mounts.default]]\nhost = '/a'\ncontainer = '/b'\nro = true\n",
            "unknown key 'mounts.default[0].ro'",
        ),
        ("[[mounts.default]]\nhost = '/a'\n", "missing key 'mounts.default[0].container'"),
        ("[defaults]\npersistent = 'yes'\n", "wrong type for 'defaults.persistent': expected bool, got str"),
        ("[defaults]\nmax_slots = true\n", "wrong type for 'defaults.max_slots'"),
        ("[profiles.rust]\nenvironment = { A = 1 }\n", "wrong type for 'profiles.rust.environment"),
        ("[defaults]\nmax_slots = 0\n", "'defaults.max_slots' must be between 1 and 999, got 0"),
        ("[network]\nmode = 'wide'\n", "'network.mode' must be one of restricted, open, allowlist"),
        ("[tool]\nname = 'aider'\n", "~/.config/coi/config.toml: unknown tool: aider"),
        ("[[mounts.default]]\nhost = '/a'\ncontainer = 'rel'\n", "container path must be absolute: rel"),
        ("[defaults\n", "~/.config/coi/config.toml: not valid TOML"),
        ("defaults = 3\n", "wrong type for 'defaults': expected object, got int"),
    ],
)
def test_bad_files_name_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve((USER, text))
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


def test_bad_environment_values() -> None:
    with pytest.raises(ConfigError, match="CLAUDE_ON_INCUS_PERSISTENT"):
        resolve(env={"CLAUDE_ON_INCUS_PERSISTENT": "maybe"})
    with pytest.raises(ConfigError, match="COI_CONTAINER_PREFIX"):
        resolve(env={"COI_CONTAINER_PREFIX": "-bad"})


def test_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="profile 'nope' not found"):
        resolve(profile="nope")


def test_config_paths_order() -> None:
    paths = config_paths({"COI_CONFIG": "~/x.toml"}, home=HOME, cwd="/w")
    assert paths == [
        ("/etc/coi/config.toml", False),
        (USER, False),
        ("/w/.coi.toml", False),
        ("/home/u/x.toml", True),
    ]
    assert config_paths({"XDG_CONFIG_HOME": "/xdg"}, home=HOME, cwd="/w")[1] == (
        "/xdg/coi/config.toml",
        False,
    )


def test_cli_mounts() -> None:
    from coi_async.config import combine_mounts, parse_mount
    from coi_async.errors import UsageError

    assert parse_mount("~/a:/data", home=HOME, cwd="/w") == Mount("/home/u/a", "/data")
    assert parse_mount("rel:/data/", home=HOME, cwd="/w") == Mount("/w/rel", "/data")
    for bad in ["nocolon", "a:b:c", ":/x", "/a:"]:
        with pytest.raises(UsageError, match="expected HOST:CONTAINER"):
            parse_mount(bad, home=HOME, cwd="/w")
    with pytest.raises(UsageError, match="must be absolute"):
        parse_mount("/a:rel", home=HOME, cwd="/w")
    configured = [Mount("/h/x", "/x"), Mount("/h/y", "/y")]
    assert combine_mounts(configured, [Mount("/other", "/x")]) == (Mount("/other", "/x"), Mount("/h/y", "/y"))
    with pytest.raises(UsageError, match="nested mount paths detected: '/x' and '/x/sub' conflict"):
        combine_mounts(configured, [Mount("/z", "/x/sub")])
    with pytest.raises(UsageError, match="/workspace"):
        combine_mounts([], [Mount("/z", "/workspace")])


def test_tool_from_flag_and_profile() -> None:
    c = resolve((USER, '[tool]\nbinary = "claude-dev"\n[profiles.g]\ntool = "gemini"\n'))
    assert apply_flags(c, tool="codex").tool.name == "codex"
    assert apply_flags(c, tool="codex").tool.binary == "", "tool.binary is the configured tool's"
    assert apply_flags(c, tool="claude").tool.binary == "claude-dev"
    assert apply_flags(c, tool="codex").sessions_dir == "/home/u/.coi/sessions-codex"
    profiled = resolve((USER, '[profiles.g]\ntool = "gemini"\n'), profile="g")
    assert profiled.tool.name == "gemini"
    assert apply_flags(profiled, tool="opencode").tool.name == "opencode", "the flag wins"


def test_unknown_tool_anywhere_names_it() -> None:
    c = resolve()
    with pytest.raises(
        ConfigError, match=r"^unknown tool: aider \(supported: claude, codex, gemini, opencode\)$"
    ):
        apply_flags(c, tool="aider")
    with pytest.raises(ConfigError) as caught:
        resolve((USER, '[profiles.p]\ntool = "aider"\n'))
    assert str(caught.value).startswith("~/.config/coi/config.toml: profiles.p.tool: unknown tool: aider")
    assert caught.value.exit_code == 2


def test_build_tools() -> None:
    assert resolve().build.tools == ("claude",)
    assert resolve((USER, '[build]\ntools = ["claude", "codex"]\n')).build.tools == ("claude", "codex")
    with pytest.raises(ConfigError, match=r"~/\.config/coi/config\.toml: unknown tool: aider"):
        resolve((USER, '[build]\ntools = ["aider"]\n'))


def test_placement_policy() -> None:
    assert resolve().placement.policy == "spread"
    for policy in ("pack", "spread", "member:m2"):
        assert resolve((USER, f'[placement]\npolicy = "{policy}"\n')).placement.policy == policy
    for bad in ("fill", "member:", ""):
        with pytest.raises(ConfigError) as caught:
            resolve((USER, f'[placement]\npolicy = "{bad}"\n'))
        assert str(caught.value).startswith(
            "~/.config/coi/config.toml: 'placement.policy': expected spread, pack or member:NAME"
        )
