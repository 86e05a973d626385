"""The egress policy: host syntax, allowlist entries, address classes and the three modes."""

from __future__ import annotations

import ipaddress

import pytest

from coi_async.config.network import HostSyntaxError, check_host, parse_entries, parse_entry, split_host_port
from coi_async.egress.addresses import classify
from coi_async.egress.policy import Policy


def ips(*texts: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(t) for t in texts]


# --- host syntax ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Deb.Debian.org", "deb.debian.org"),
        ("deb.debian.org.", "deb.debian.org"),
        ("1password.com", "1password.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("10.1.2.3", "10.1.2.3"),
        ("[::1]", "::1"),
        ("::FFFF:10.0.0.1", "::ffff:a00:1"),
        ("localhost", "localhost"),
    ],
)
def test_hosts_are_canonicalised(text: str, canonical: str) -> None:
    assert check_host(text) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a\x00b.com",
        "evil.com\x00.deb.debian.org",
        "a_b.example.com",
        "bücher.example",
        "a b.com",
        "a%2eb.com",
        "user@host.com",
        "a..b.com",
        "-a.com",
        "a-.com",
        "a" * 64 + ".com",
        ("a." * 127) + "com",
        "127.1",
        "0x7f.0.0.1",
        "2130706433",
        "010.0.0.1",
        "1.2.3",
        "fe80::1%eth0",
        "[1.2.3.4]",
        "[::1",
        "*.example.com",
    ],
)
def test_anything_but_plain_ascii_names_and_ip_literals_is_refused(text: str) -> None:
    with pytest.raises(HostSyntaxError):
        check_host(text)


def test_split_host_port() -> None:
    assert split_host_port("Deb.Debian.org:443") == ("deb.debian.org", 443)
    assert split_host_port("[::1]:80") == ("::1", 80)
    assert split_host_port("x.org", default_port=80) == ("x.org", 80)
    for bad in ("x.org", "x.org:0", "x.org:65536", "x.org:+80", "x.org:８０", "::1:80", "[::1]x"):
        with pytest.raises(HostSyntaxError):
            split_host_port(bad)


# --- allowlist entries ---------------------------------------------------------------------------


def test_entries_of_every_kind() -> None:
    entries = parse_entries(
        ["api.example.com", "*.npmjs.org", "10.0.0.5", "10.1.0.0/16", "fd00::/8", "[::1]:9000", "h.org:8080"]
    )
    assert [str(e) for e in entries] == [
        "api.example.com",
        "*.npmjs.org",
        "10.0.0.5",
        "10.1.0.0/16",
        "fd00::/8",
        "[::1]:9000",
        "h.org:8080",
    ]
    assert [e.kind for e in entries] == ["name", "suffix", "network", "network", "network", "network", "name"]


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("a*.org", "'*' only as a leading '*.'"),
        ("*.x.*", "bad"),
        ("*.com", "'*.' must be followed by a domain"),
        ("*.10.0.0.1", "bad"),
        ("10.0.0.0/33", "bad CIDR range"),
        ("10.0.0.1/8", "bad CIDR range"),
        ("exa mple.com", "bad domain"),
        ("host:0", "bad port"),
        ("[::1", "bad entry"),
        ("", "empty"),
    ],
)
def test_bad_entries_say_what_is_wrong(entry: str, fragment: str) -> None:
    with pytest.raises(HostSyntaxError) as info:
        parse_entry(entry)
    assert fragment in str(info.value)


# --- address classes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", "public"),
        ("203.0.113.80", "public"),  # documentation ranges count as public (see addresses.py)
        ("2606:4700::1111", "public"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd00::1", "private"),
        ("fc00::1", "private"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        # IPv6 forms of IPv4 addresses are judged by the address inside.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:8.8.8.8", "public"),
        ("::10.0.0.1", "private"),
        ("::127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("2002:7f00:1::", "loopback"),
        ("2002:808:808::", "public"),
        ("2001:0:1::1", "reserved"),
    ],
)
def test_address_classes(address: str, kind: str) -> None:
    assert classify(ipaddress.ip_address(address)) == kind


# --- the modes -----------------------------------------------------------------------------------


def test_open_admits_anything_but_denied_hosts() -> None:
    policy = Policy(mode="open", deny=parse_entries(["evil.example"]))
    assert policy.check_name("127.0.0.1", 8080).allowed
    assert policy.check_addresses("x.org", 80, ips("10.0.0.1", "127.0.0.1")).allowed
    refused = policy.check_name("evil.example", 8080)
    assert not refused.allowed
    assert "denied" in refused.reason


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("10.1.2.3", "10.1.2.3 is a private address (network.block_private_networks)"),
        (
            "169.254.169.254",
            "169.254.169.254 is the cloud metadata address (network.block_metadata_endpoint)",
        ),
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("::ffff:192.168.0.1", "private address"),
        ("0.0.0.0", "unspecified address"),
        ("100.100.100.100", "private address"),
    ],
)
def test_restricted_refuses_non_public_address_literals_before_resolving(address: str, fragment: str) -> None:
    verdict = Policy(mode="restricted").check_name(check_host(address), 443)
    assert not verdict.allowed
    assert fragment in verdict.reason


def test_restricted_checks_every_resolved_address() -> None:
    policy = Policy(mode="restricted")
    assert policy.check_name("example.org", 443).allowed  # names are judged by their addresses
    assert policy.check_addresses("example.org", 443, ips("93.184.215.14", "2606:2800::1")).allowed
    # One bad address spoils the name: a rebinding resolver could hand out either.
    verdict = policy.check_addresses("rebind.example", 443, ips("93.184.215.14", "127.0.0.1"))
    assert not verdict.allowed
    assert verdict.reason.startswith("rebind.example resolves to 127.0.0.1, which is a loopback address")
    assert not policy.check_addresses("nothing.example", 443, []).allowed


def test_the_block_keys_keep_their_meaning() -> None:
    private, metadata, loopback = ips("192.168.1.10", "169.254.169.254", "127.0.0.1")
    default = Policy(mode="restricted")
    assert not default.check_addresses("h", 80, [private]).allowed
    assert not default.check_addresses("h", 80, [metadata]).allowed
    local = Policy(mode="restricted", allow_local_network_access=True)
    assert local.check_addresses("h", 80, [private]).allowed
    assert not local.check_addresses("h", 80, [metadata]).allowed  # not a local network
    assert Policy(mode="restricted", block_private_networks=False).check_addresses("h", 80, [private]).allowed
    no_md = Policy(mode="restricted", block_metadata_endpoint=False)
    assert no_md.check_addresses("h", 80, [metadata]).allowed
    assert not no_md.check_addresses("h", 80, [private]).allowed
    everything = Policy(
        mode="restricted",
        allow_local_network_access=True,
        block_private_networks=False,
        block_metadata_endpoint=False,
    )
    assert not everything.check_addresses("h", 80, [loopback]).allowed  # the host itself: never


def test_allowlist_admits_listed_names_on_web_ports_and_listed_ranges() -> None:
    policy = Policy(
        mode="allowlist",
        allow=parse_entries(["deb.debian.org", "*.npmjs.org", "10.0.0.0/8:8080", "git.example:2222"]),
    )
    assert policy.check_name("deb.debian.org", 80).allowed
    assert policy.check_name("deb.debian.org", 443).allowed
    assert not policy.check_name("deb.debian.org", 22).allowed
    assert policy.check_name("registry.npmjs.org", 443).allowed
    assert not policy.check_name("npmjs.org", 443).allowed  # the suffix itself is not below itself
    assert not policy.check_name("evil-npmjs.org", 443).allowed
    assert policy.check_name("git.example", 2222).allowed
    assert policy.check_name("10.9.8.7", 8080).allowed  # listed: asked for, whatever its class
    assert not policy.check_name("10.9.8.7", 80).allowed
    refused = policy.check_name("github.com", 443)
    assert not refused.allowed
    assert "github.com:443 is not in the allowlist (allowed: deb.debian.org, *.npmjs.org" in refused.reason
    # A listed name must still resolve to addresses restricted mode admits...
    assert not policy.check_addresses("deb.debian.org", 80, ips("169.254.169.254")).allowed
    assert policy.check_addresses("deb.debian.org", 80, ips("151.101.2.132")).allowed
    # ...unless the address is itself listed.
    assert policy.check_addresses("registry.npmjs.org", 8080, ips("10.1.1.1")).allowed


def test_deny_wins_over_allow_and_without_a_port_denies_every_port() -> None:
    policy = Policy(
        mode="allowlist",
        allow=parse_entries(["api.example.com", "8.8.8.0/24"]),
        deny=parse_entries(["api.example.com", "8.8.8.8:443"]),
    )
    assert not policy.check_name("api.example.com", 443).allowed
    assert not policy.check_name("api.example.com", 9999).allowed
    assert not policy.check_name("8.8.8.8", 443).allowed
    assert policy.check_name("8.8.8.8", 80).allowed
    assert not policy.check_addresses("dns.example", 443, ips("8.8.8.8")).allowed
