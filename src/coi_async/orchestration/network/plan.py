"""A session's network: its policy from the config, and what its container is given for it.

- `session_policy`: the daemon's policy for a session, from the `[network]` config, the tool,
  the mode the session started in, and the live `coi network allow/deny` entries.
- `proxied`/`egress_devices`/`egress_config`: the Incus side. A session that goes through the
  daemon has every NIC it would inherit from its profiles masked with a `none` device of the
  same name, a way to the daemon at its 127.0.0.1:EGRESS_PORT, and the proxy variables in its
  `environment.*` config, which incusd gives every exec (so `coi container exec` and a user's
  own `incus exec` get them too; they are no secret). The way is the daemon listening inside
  the container itself when it runs as root (egress/netns.py: no relay in between), else a
  `proxy` device to the session's daemon socket. Only `open` with a NIC in the profile keeps
  the NIC and needs none of this.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from coi_async.config.model import Network
from coi_async.config.network import parse_entries
from coi_async.egress.netns import can_enter
from coi_async.egress.policy import Mode, Policy
from coi_async.errors import EgressError
from coi_async.orchestration.network.members import KEY_POLICY, MemberEgress
from coi_async.orchestration.network.paths import EgressPaths, session_key
from coi_async.tools import Tool

EGRESS_PORT = 3128
EGRESS_DEVICE = "coi-egress"
EGRESS_URL = f"http://127.0.0.1:{EGRESS_PORT}"
# `proxy-device` makes a root coi use the proxy device too (the way a non-root coi always goes).
ATTACH_ENV = "COI_EGRESS_ATTACH"
NO_PROXY = "localhost,127.0.0.1,::1"
# The session's network mode, stamped on its instance (`coi list` shows it).
KEY_NETWORK = "user.coi.network"
# The NIC names masked at creation, so a later start knows which `none` devices are ours.
KEY_MASKED = "user.coi.network.masked"


def session_policy(
    network: Network, tool: Tool, mode: Mode, *, allow: Sequence[str] = (), deny: Sequence[str] = ()
) -> Policy:
    """The policy for a session in `mode`. In `allowlist` mode the tool's own API hosts are always
    listed, so no allowlist cuts the tool off its API; `allow` (live entries) counts in every
    mode, as a deliberate exception to the address classes. HostSyntaxError for a bad entry."""
    listed = [*tool.api_hosts, *network.allowed_domains] if mode == "allowlist" else []
    return Policy(
        mode=mode,
        block_private_networks=network.block_private_networks,
        block_metadata_endpoint=network.block_metadata_endpoint,
        allow_local_network_access=network.allow_local_network_access,
        allow=parse_entries([*listed, *allow]),
        deny=parse_entries(deny),
    )


def nic_names(devices: Mapping[str, Mapping[str, str]]) -> list[str]:
    return sorted(name for name, device in devices.items() if device.get("type") == "nic")


def proxied(mode: str, profile_nics: Sequence[str]) -> bool:
    """Whether the session's egress goes through the daemon (everything but open with a NIC)."""
    return not (mode == "open" and profile_nics)


def proxy_env() -> dict[str, str]:
    """The variables every process of a proxied session gets, in both cases tools read."""
    env: dict[str, str] = {}
    for name, value in (("http_proxy", EGRESS_URL), ("https_proxy", EGRESS_URL), ("no_proxy", NO_PROXY)):
        env[name] = value
        env[name.upper()] = value
    return env


def may_listen_inside(env: Mapping[str, str] | None = None) -> bool:
    """Whether the daemon this coi starts can listen inside containers, and is to."""
    attach = (os.environ if env is None else env).get(ATTACH_ENV, "")
    return attach != "proxy-device" and can_enter()


def egress_device(socket: str, *, inside: bool, port: int = EGRESS_PORT) -> dict[str, str]:
    """The session's way to the daemon; with the daemon listening inside the container, a `none`
    device, which also keeps a profile's device of that name out."""
    if inside:
        return {"type": "none"}
    return {
        "type": "proxy",
        "listen": f"tcp:127.0.0.1:{port}",
        "connect": f"unix:{socket}",
        "bind": "instance",
    }


def egress_devices(nics: Sequence[str], socket: str, *, inside: bool) -> dict[str, dict[str, str]]:
    """The devices of a proxied session: every inherited NIC masked, and the way to the daemon."""
    devices: dict[str, dict[str, str]] = {name: {"type": "none"} for name in nics}
    devices[EGRESS_DEVICE] = egress_device(socket, inside=inside)
    return devices


def egress_config(mode: str, nics: Sequence[str], *, through_daemon: bool) -> dict[str, str]:
    config = {KEY_NETWORK: mode}
    if through_daemon:
        if nics:  # incusd drops a key set to "": an empty one would never compare equal
            config[KEY_MASKED] = ",".join(nics)
        config.update({f"environment.{k}": v for k, v in proxy_env().items()})
    return config


class EgressPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a launch needs to know about the session's network."""

    mode: Mode
    project: str
    nics: tuple[str, ...] = ()  # inherited from the profile: masked when through the daemon
    through_daemon: bool = True
    inside: bool = False  # the daemon listens inside the container (else: a proxy device)
    root: str = ""  # the daemon's directory ("" when not through it)
    # Over a remote (members.py): the members whose daemon serves sessions, and the policy the
    # session carries to the one it is placed on (`on_member` then sets `inside` and `root`).
    remote: bool = False
    served: tuple[MemberEgress, ...] = ()
    carried: str = ""

    @property
    def needs_member(self) -> bool:
        """Whether it must go to a member whose daemon serves it, not yet chosen."""
        return self.remote and self.through_daemon and not self.root

    def served_members(self) -> frozenset[str] | None:
        """The members it may be placed on; None: any."""
        return frozenset(a.member for a in self.served) if self.remote and self.through_daemon else None

    def on_member(self, member: str) -> EgressPlan:
        """The plan for a session on `member`; EgressError when no daemon there serves it."""
        if not (self.remote and self.through_daemon):
            return self
        advert = next((a for a in self.served if a.member == member), None)
        if advert is None:
            raise EgressError(
                f"'{member}' runs no coi egress daemon, so a {self.mode} session cannot go there: "
                "start `coi egress serve` beside its incusd"
            )
        return msgspec.structs.replace(self, inside=advert.inside, root=advert.root)

    def socket_of(self, container: str) -> str:
        return str(self.paths.socket_of(session_key(self.project, container)))

    @property
    def paths(self) -> EgressPaths:
        return EgressPaths(Path(self.root))

    def devices(self, container: str) -> dict[str, dict[str, str]]:
        if not self.through_daemon:
            return {}
        return egress_devices(self.nics, self.socket_of(container), inside=self.inside)

    def config(self) -> dict[str, str]:
        config = egress_config(self.mode, self.nics, through_daemon=self.through_daemon)
        if self.carried:
            config[KEY_POLICY] = self.carried
        return config
