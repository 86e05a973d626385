"""Whether a session may reach a host: the three network modes, decided before any connection. Pure.

- `open`: any host.
- `restricted`: any host whose every resolved address is public (addresses.py). Private ranges
  pass with `allow_local_network_access`, or when `block_private_networks` is off; link-local
  ones (the cloud metadata address among them) when `block_metadata_endpoint` is off. Loopback,
  unspecified, multicast and reserved addresses never pass.
- `allowlist`: only names matching an allow entry (exact or `*.suffix`), and addresses inside an
  allow entry's range; a listed name must still resolve to addresses `restricted` admits.

In every mode a deny entry (`coi network deny`) wins, and an address inside an allow entry's range
passes whatever its class: listing it is asking for it. The check runs twice: on the name asked
for (`check_name`), then on every address the daemon resolved it to (`check_addresses`); the
daemon connects only to an address that passed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Literal

import msgspec

from coi_async.config.network import AllowEntry, IPAddress, IPNetwork, parse_ip
from coi_async.egress.addresses import classify, describe

Mode = Literal["open", "restricted", "allowlist"]
MODES: tuple[Mode, ...] = ("restricted", "open", "allowlist")


def as_mode(text: str) -> Mode:
    """`text` as a mode; anything unknown is `restricted` (the config checked it already, so this
    only ever meets a surprise, and a surprise must never widen anything)."""
    for mode in MODES:
        if mode == text:
            return mode
    return "restricted"


class Verdict(msgspec.Struct, frozen=True):
    allowed: bool
    reason: str  # why, in words (for refusals the log and the 403 body)


ALLOWED = Verdict(allowed=True, reason="")


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    mode: Mode = "restricted"
    block_private_networks: bool = True
    block_metadata_endpoint: bool = True
    allow_local_network_access: bool = False
    allow: tuple[AllowEntry, ...] = ()
    deny: tuple[AllowEntry, ...] = ()

    def describe_allowlist(self) -> str:
        return ", ".join(str(e) for e in self.allow) or "nothing"

    def check_name(self, host: str, port: int) -> Verdict:
        """The verdict on a canonical host (config.network.check_host) before resolving it.

        Allowed means: resolve it and pass the addresses to `check_addresses`.
        """
        where = f"{host}:{port}"
        address = parse_ip(host)
        denied = _matching(self.deny, host, address, port, deny=True)
        if denied is not None:
            return Verdict(allowed=False, reason=f"{where} is denied (entry {denied})")
        if self.mode == "open":
            return ALLOWED
        if address is not None:
            if _in_networks(self.allow, address, port) is not None:
                return ALLOWED
            if self.mode == "allowlist":
                return self._not_listed(where)
            return self._address_verdict(address, port, host)
        if self.mode == "allowlist" and not any(
            e.matches_name(host) and e.admits_port(port) for e in self.allow
        ):
            return self._not_listed(where)
        return ALLOWED

    def check_addresses(self, host: str, port: int, addresses: Sequence[IPAddress]) -> Verdict:
        """The verdict on every address `host` resolved to: all of them must pass."""
        if not addresses:
            return Verdict(allowed=False, reason=f"{host} has no address")
        for address in addresses:
            verdict = self._address_verdict(address, port, host)
            if not verdict.allowed:
                return verdict
        return ALLOWED

    def _address_verdict(self, address: IPAddress, port: int, host: str) -> Verdict:
        resolved = "" if str(address) == host else f"{host} resolves to "
        denied = _in_networks(self.deny, address, port, deny=True)
        if denied is not None:
            return Verdict(allowed=False, reason=f"{resolved}{address}, which is denied (entry {denied})")
        if self.mode == "open" or _in_networks(self.allow, address, port) is not None:
            return ALLOWED
        kind = classify(address)
        if kind == "public":
            return ALLOWED
        if kind == "private" and (self.allow_local_network_access or not self.block_private_networks):
            return ALLOWED
        if kind == "link-local" and not self.block_metadata_endpoint:
            return ALLOWED
        key = {
            "private": " (network.block_private_networks)",
            "link-local": " (network.block_metadata_endpoint)",
        }.get(kind, "")
        what = describe(address, kind)
        if resolved:
            what = f"{resolved}{what.replace(' is ', ', which is ', 1)}"
        return Verdict(allowed=False, reason=f"{what}{key}; {self.mode} mode admits public addresses only")

    def _not_listed(self, where: str) -> Verdict:
        return Verdict(
            allowed=False,
            reason=f"{where} is not in the allowlist (allowed: {self.describe_allowlist()})",
        )


def _port_ok(entry: AllowEntry, port: int, *, deny: bool) -> bool:
    # A deny entry without a port denies every port; an allow entry without one admits 80 and 443.
    return (deny and entry.port is None) or entry.admits_port(port)


def _in_networks(
    entries: Sequence[AllowEntry], address: IPAddress, port: int, *, deny: bool = False
) -> AllowEntry | None:
    for entry in entries:
        net = entry.network()
        if net is not None and _port_ok(entry, port, deny=deny) and _contains(net, address):
            return entry
    return None


def _contains(net: IPNetwork, address: IPAddress) -> bool:
    if isinstance(net, ipaddress.IPv4Network):
        return isinstance(address, ipaddress.IPv4Address) and address in net
    return isinstance(address, ipaddress.IPv6Address) and address in net


def _matching(
    entries: Sequence[AllowEntry], host: str, address: IPAddress | None, port: int, *, deny: bool
) -> AllowEntry | None:
    if address is not None:
        return _in_networks(entries, address, port, deny=deny)
    for entry in entries:
        if entry.matches_name(host) and _port_ok(entry, port, deny=deny):
            return entry
    return None
