"""The grammar of egress hosts and allowlist entries, shared by the config and the egress daemon. Pure.

A host is an IP literal or a DNS name of ASCII letters, digits, `-` and `.`; nothing else gets as
far as matching or resolving (a NUL byte, `_`, `%`, `@`, spaces and non-ASCII are all refused).
A name whose last label is numeric must be a plain dotted-quad IPv4 address: resolvers read
`127.1`, `0x7f.1` or `2130706433` as addresses, and a policy must never see a "name" that
connects somewhere its text does not say.

Allowlist entries: `name`, `*.suffix` (every name below suffix, not suffix itself), an IPv4 or
IPv6 address, or a CIDR range; each optionally with `:port` (IPv6 in brackets: `[::1]:8080`,
`[fd00::/8]:443`). Without a port an entry admits the web ports 80 and 443.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Literal

import msgspec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

WEB_PORTS: frozenset[int] = frozenset({80, 443})
MAX_NAME = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_ASCII_HOST = re.compile(r"[A-Za-z0-9.\-:\[\]]+")


class HostSyntaxError(ValueError):
    """Text that is not a host, an authority or an allowlist entry; the message says why."""


def _shown(text: str) -> str:
    return repr(text[:80])


def parse_ip(text: str) -> IPAddress | None:
    """The address `text` spells exactly (no zone ids, no shorthand IPv4 forms), else None."""
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def check_host(text: str) -> str:
    """`text` as a canonical host: a lower-case name without trailing dot, or an IP literal
    (IPv6 without brackets, compressed). HostSyntaxError for anything else."""
    if not text or not _ASCII_HOST.fullmatch(text):
        raise HostSyntaxError(f"bad host {_shown(text)}: only letters, digits, '-' and '.' are allowed")
    if text.startswith("["):
        if not text.endswith("]"):
            raise HostSyntaxError(f"bad host {_shown(text)}")
        address = parse_ip(text[1:-1])
        if not isinstance(address, ipaddress.IPv6Address):
            raise HostSyntaxError(f"bad host {_shown(text)}: not an IPv6 address")
        return address.compressed
    if ":" in text:
        address = parse_ip(text)
        if not isinstance(address, ipaddress.IPv6Address):
            raise HostSyntaxError(f"bad host {_shown(text)}")
        return address.compressed
    name = text.lower()
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if not name or len(name) > MAX_NAME:
        raise HostSyntaxError(f"bad host {_shown(text)}: empty or longer than {MAX_NAME} characters")
    labels = name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        address = parse_ip(name)
        if not isinstance(address, ipaddress.IPv4Address):
            raise HostSyntaxError(f"bad host {_shown(text)}: not a dotted-quad IPv4 address")
        return str(address)
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise HostSyntaxError(f"bad host {_shown(text)}: bad label {label[:63]!r}")
    return name


def split_host_port(authority: str, *, default_port: int | None = None) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or, with a default port, a bare host: canonical host and port."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise HostSyntaxError(f"bad address {_shown(authority)}")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise HostSyntaxError(f"bad address {_shown(authority)}")
        port_text = rest[1:] if rest else None
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    elif ":" in authority:
        raise HostSyntaxError(f"bad address {_shown(authority)}: IPv6 addresses go in brackets")
    else:
        host, port_text = authority, None
    if port_text is None:
        if default_port is None:
            raise HostSyntaxError(f"no port in {_shown(authority)}")
        port = default_port
    else:
        port = parse_port(port_text, authority)
    return check_host(host), port


def parse_port(text: str, context: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise HostSyntaxError(f"bad port in {_shown(context)}")
    return int(text)


class AllowEntry(msgspec.Struct, frozen=True):
    """One allowlist entry, parsed: what it names and on which port (None: 80 and 443)."""

    kind: Literal["name", "suffix", "network"]
    value: str  # the name; the suffix without "*."; the network in CIDR form (a /32 for an address)
    port: int | None = None

    def __str__(self) -> str:
        text = f"*.{self.value}" if self.kind == "suffix" else self.value
        if self.kind == "network":
            net = ipaddress.ip_network(self.value)
            if net.num_addresses == 1:
                text = str(net.network_address)
            if self.port is not None and net.version == 6:
                return f"[{text}]:{self.port}"
        return text if self.port is None else f"{text}:{self.port}"

    def admits_port(self, port: int) -> bool:
        return port in WEB_PORTS if self.port is None else port == self.port

    def matches_name(self, host: str) -> bool:
        if self.kind == "name":
            return host == self.value
        if self.kind == "suffix":
            return host.endswith("." + self.value)
        return False

    def network(self) -> IPNetwork | None:
        return ipaddress.ip_network(self.value) if self.kind == "network" else None


def _split_entry_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0 or (entry[end + 1 :] and not entry[end + 1 :].startswith(":")):
            raise HostSyntaxError(f"bad entry {_shown(entry)}")
        rest = entry[end + 1 :]
        return entry[1:end], parse_port(rest[1:], entry) if rest else None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, parse_port(port, entry)
    return entry, None


def parse_entry(text: str) -> AllowEntry:
    """One allowlist entry (see the module docstring); HostSyntaxError says what is wrong."""
    entry = text.strip()
    if not entry:
        raise HostSyntaxError("empty entry")
    host, port = _split_entry_port(entry)
    if "/" in host:
        try:
            net = ipaddress.ip_network(host, strict=True)
        except ValueError as exc:
            raise HostSyntaxError(f"bad CIDR range {_shown(host)}: {exc}") from None
        return AllowEntry("network", str(net), port)
    if (address := parse_ip(host)) is not None:
        return AllowEntry("network", str(ipaddress.ip_network(address)), port)
    if host.startswith("*."):
        suffix = check_host(host[2:])
        if parse_ip(suffix) is not None or "." not in suffix:
            raise HostSyntaxError(f"bad wildcard {_shown(host)}: '*.' must be followed by a domain")
        return AllowEntry("suffix", suffix, port)
    if "*" in host:
        raise HostSyntaxError(f"bad wildcard {_shown(host)}: '*' only as a leading '*.'")
    try:
        return AllowEntry("name", check_host(host), port)
    except HostSyntaxError as exc:
        raise HostSyntaxError(f"bad domain {_shown(host)}: {str(exc).partition(': ')[2] or exc}") from None


def parse_entries(entries: Iterable[str]) -> tuple[AllowEntry, ...]:
    """Every entry parsed, duplicates dropped, order kept; HostSyntaxError names the first bad one."""
    parsed: dict[AllowEntry, None] = {}
    for text in entries:
        parsed[parse_entry(text)] = None
    return tuple(parsed)
