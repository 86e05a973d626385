"""Which hosts egress may reach: allowlist entries, parsed strictly, matched on the name asked for."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import msgspec

from coi_async.errors import EgressError

# The package registries the shipped recipes use; nothing else.
DEFAULT_ALLOWLIST: tuple[str, ...] = ("deb.debian.org", "security.debian.org", "registry.npmjs.org")
DEFAULT_PORTS: frozenset[int] = frozenset({80, 443})


class _Rule(msgspec.Struct, frozen=True):
    host: str  # lower case, no trailing dot; "*.x.org" matches every name below x.org
    port: int | None  # None: the default web ports

    def matches(self, host: str, port: int) -> bool:
        if self.port is None:
            if port not in DEFAULT_PORTS:
                return False
        elif port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


def _normalise_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def split_host_port(authority: str, *, default_port: int | None = None) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or (with a default port) a bare host; ValueError if malformed."""
    authority = authority.strip()
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"bad address {authority!r}")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {authority!r}")
        port_text = rest[1:] if rest else ""
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    else:
        host, port_text = authority, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"no port in {authority!r}")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"bad port in {authority!r}")
        port = int(port_text)
    host = _normalise_host(host)
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad address {authority!r}")
    return host, port


class Allowlist(msgspec.Struct, frozen=True):
    """Which hosts the proxy lets through.

    Entries: `host` (ports 80 and 443), `host:port`, `*.domain` (every name below domain),
    `[v6]:port`. Names are compared case-blind; an IP address only matches an entry for that
    address, never a name that might resolve to it.
    """

    rules: tuple[_Rule, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        rules = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                if entry.startswith("[") or entry.count(":") == 1:
                    host, port = split_host_port(entry)
                    rules.append(_Rule(host, port))
                else:
                    host = _normalise_host(entry)
                    if ":" in host:
                        ipaddress.IPv6Address(host)  # a bare v6 address; anything else is a typo
                    rules.append(_Rule(host, None))
            except ValueError as exc:
                raise EgressError(f"bad egress allowlist entry {raw!r}: {exc}") from exc
            pattern = rules[-1].host
            if "*" in pattern and (not pattern.startswith("*.") or "*" in pattern[1:]):
                raise EgressError(f"bad egress allowlist entry {raw!r}: '*' only as '*.domain'")
        return cls(tuple(rules))

    def permits(self, host: str, port: int) -> bool:
        name = _normalise_host(host)
        return any(rule.matches(name, port) for rule in self.rules)

    def describe(self) -> str:
        return ", ".join(r.host if r.port is None else f"{r.host}:{r.port}" for r in self.rules) or "nothing"
