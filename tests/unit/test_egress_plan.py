"""What a session's instance is given for its network, and the policy the daemon builds from config."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from coi_async.config import resolve_config
from coi_async.config.network import HostSyntaxError
from coi_async.incus.models import Instance
from coi_async.orchestration.network import registry
from coi_async.orchestration.network.paths import EgressPaths, session_key
from coi_async.orchestration.network.plan import (
    EGRESS_DEVICE,
    KEY_MASKED,
    KEY_NETWORK,
    EgressPlan,
    proxied,
    proxy_env,
    session_policy,
)
from coi_async.orchestration.network.registry import Registration
from coi_async.orchestration.network.session import _patch
from coi_async.orchestration.sessions.instance_spec import LaunchSpec, instance_config, instance_devices
from coi_async.tools import CLAUDE, TOOLS


def plan(mode: str = "restricted", nics: tuple[str, ...] = ("eth0",)) -> EgressPlan:
    return EgressPlan(
        mode=mode,  # type: ignore[arg-type]
        project="p",
        nics=nics,
        through_daemon=proxied(mode, nics),
        root="/run/user/1000/coi-egress-abcd1234",
    )


def test_a_proxied_session_masks_every_profile_nic_and_gets_the_daemon_socket() -> None:
    spec = LaunchSpec(workspace="/w", image="i", prefix="coi-", egress=plan(nics=("eth0", "eth1")))
    devices = instance_devices(spec, shift=False, name="coi-12345678-1")
    assert devices["eth0"] == {"type": "none"}
    assert devices["eth1"] == {"type": "none"}
    socket = f"/run/user/1000/coi-egress-abcd1234/s/{session_key('p', 'coi-12345678-1')}.sock"
    assert devices[EGRESS_DEVICE] == {
        "type": "proxy",
        "listen": "tcp:127.0.0.1:3128",
        "connect": f"unix:{socket}",
        "bind": "instance",
    }
    config = instance_config(spec, 1)
    assert config[KEY_NETWORK] == "restricted"
    assert config[KEY_MASKED] == "eth0,eth1"
    assert config["environment.HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert config["environment.no_proxy"] == "localhost,127.0.0.1,::1"


def test_open_with_a_nic_keeps_it_and_open_without_one_goes_through_the_daemon() -> None:
    with_nic = LaunchSpec(workspace="/w", image="i", prefix="coi-", egress=plan("open", ("eth0",)))
    assert set(instance_devices(with_nic, shift=False, name="c")) == {"workspace"}
    assert instance_config(with_nic, 1)[KEY_NETWORK] == "open"
    assert "environment.HTTP_PROXY" not in instance_config(with_nic, 1)
    without = LaunchSpec(workspace="/w", image="i", prefix="coi-", egress=plan("open", ()))
    assert set(instance_devices(without, shift=False, name="c")) == {"workspace", EGRESS_DEVICE}


def test_proxy_variables_in_both_cases() -> None:
    env = proxy_env()
    assert set(env) == {
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    }


def test_an_existing_instance_is_brought_in_line() -> None:
    p = plan()
    socket = p.socket_of("c")
    current = Instance(
        name="c",
        config={KEY_NETWORK: "open"},
        expanded_devices={"eth0": {"type": "nic", "parent": "nowhere"}, "lan": {"type": "nic"}},
    )
    patch = _patch(p, current)
    assert patch is not None
    assert patch.devices is not None
    assert patch.devices["eth0"] == patch.devices["lan"] == {"type": "none"}
    assert patch.devices[EGRESS_DEVICE]["connect"] == f"unix:{socket}"
    assert patch.config is not None
    assert patch.config[KEY_NETWORK] == "restricted"
    assert patch.config[KEY_MASKED] == "eth0,lan"
    done = Instance(
        name="c",
        config={**patch.config},
        expanded_devices={
            "eth0": {"type": "none"},
            "lan": {"type": "none"},
            EGRESS_DEVICE: patch.devices[EGRESS_DEVICE],
        },
    )
    assert _patch(p, done) is None


def test_the_policy_from_config() -> None:
    config = resolve_config(
        [("/c.toml", '[network]\nallowed_domains = ["example.org"]\nallow_local_network_access = true\n')],
        {},
        home="/h",
    )
    listed = session_policy(config.network, CLAUDE, "allowlist", allow=["10.0.0.5:8080"], deny=["bad.org"])
    assert [str(e) for e in listed.allow][:1] == ["api.anthropic.com"]  # the tool's API: always
    assert "example.org" in [str(e) for e in listed.allow]
    assert listed.allow_local_network_access is True
    assert listed.check_name("10.0.0.5", 8080).allowed
    assert not listed.check_name("bad.org", 443).allowed
    restricted = session_policy(config.network, CLAUDE, "restricted")
    assert restricted.allow == ()  # the allowlist is allowlist mode's
    with pytest.raises(HostSyntaxError):
        session_policy(config.network, CLAUDE, "restricted", allow=["exa mple.org"])


def test_registrations_round_trip_and_change_when_their_config_does(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    paths = EgressPaths(runtime / "coi-egress-x").make()
    config_file = tmp_path / "c.toml"
    r = Registration(
        key=session_key("p", "c"),
        container="c",
        project="p",
        mode="allowlist",
        socket="/s",
        cwd="/",
        home="/h",
    )
    registry.write(paths, r)
    assert registry.read_all(paths) == {r.key: r}
    assert registry.find(paths, "c", "p") == r
    assert registry.find(paths, "c", "other") is None
    before = registry.fingerprint(r, [str(config_file)])
    config_file.write_text("[network]\n")
    assert registry.fingerprint(r, [str(config_file)]) != before
    (paths.registrations / "junk.json").write_text("{not json")
    assert list(registry.read_all(paths)) == [r.key]
    registry.remove(paths, [r.key])
    assert registry.read_all(paths) == {}
    assert oct(paths.root.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_tool_reaches_its_api_in_allowlist_mode(tool: str) -> None:
    config = resolve_config([], {}, home="/h")
    listed = session_policy(config.network, TOOLS[tool], "allowlist")
    allowed = [str(e) for e in listed.allow]
    assert allowed[: len(TOOLS[tool].api_hosts)] == list(TOOLS[tool].api_hosts)
    assert "registry.npmjs.org" in allowed
    # A registration says which tool the session runs (`--tool` is not in its config files).
    r = Registration(
        key="k", container="c", project="p", mode="allowlist", socket="/s", cwd="/", home="/h", tool=tool
    )
    assert registry.fingerprint(r, []) != registry.fingerprint(msgspec.structs.replace(r, tool=""), [])
