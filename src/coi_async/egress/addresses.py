"""What kind of address a connection would go to: public, or one of the ranges a session must not
reach. Pure.

IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address inside: a connect to them
ends up there. Everything that is not plainly global unicast is refused by class, so a range
missing from a table errs on the side of refusing.

The documentation and benchmarking ranges (192.0.2/24, 198.51.100/24, 203.0.113/24, 198.18/15,
2001:db8::/32) count as public: nothing on the internet answers there, but some networks route
them to their own egress (on a sandboxed build machine deb.debian.org can resolve to one), and
they are none of the local ranges a session must be kept from.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from coi_async.config.network import IPAddress

AddressClass = Literal[
    "public",
    "private",  # RFC 1918, CGNAT 100.64/10, ULA fc00::/7: `block_private_networks`
    "link-local",  # 169.254/16 (the cloud metadata address), fe80::/10: `block_metadata_endpoint`
    "loopback",
    "unspecified",  # 0.0.0.0/8, ::
    "multicast",
    "reserved",  # future use, broadcast, IETF protocol assignments, discard, Teredo, ...
]

METADATA_ADDRESS = ipaddress.IPv4Address("169.254.169.254")

_V4: tuple[tuple[str, AddressClass], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "private"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
)
_V6: tuple[tuple[str, AddressClass], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "link-local"),  # site-local, deprecated but still routed by some stacks
    ("ff00::/8", "multicast"),
    ("100::/64", "reserved"),
    ("2001::/32", "reserved"),  # Teredo: the IPv4 server inside is not the one connected to
    ("2001:10::/28", "reserved"),
    ("2001:20::/28", "reserved"),
    ("3fff::/20", "reserved"),
    ("5f00::/16", "reserved"),
)
_V4_NETS = tuple((ipaddress.IPv4Network(n), c) for n, c in _V4)
_V6_NETS = tuple((ipaddress.IPv6Network(n), c) for n, c in _V6)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, when it is one of the forms that carry one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return None


def classify(address: IPAddress) -> AddressClass:
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return classify(inner)
        if address in _NAT64_LOCAL:
            return "private"
        for net6, kind in _V6_NETS:
            if address in net6:
                return kind
        return "public" if address in _GLOBAL_UNICAST else "reserved"
    for net4, kind in _V4_NETS:
        if address in net4:
            return kind
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "reserved"
    return "public"


def describe(address: IPAddress, kind: AddressClass) -> str:
    """`10.1.2.3 is a private address`, with the metadata address called what it is."""
    inner = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else address
    if inner == METADATA_ADDRESS:
        return f"{address} is the cloud metadata address"
    article = "an" if kind[0] in "aeiou" or kind == "unspecified" else "a"
    return f"{address} is {article} {kind} address"
