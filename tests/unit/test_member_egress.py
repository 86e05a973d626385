"""members: what the daemon beside a remote's incusd and the coi launching there tell each other
through incusd (adverts, the carried policy). Written by others: anything odd counts as absent."""

from __future__ import annotations

import msgspec

from coi_async.config.network import parse_entries
from coi_async.egress.policy import Policy
from coi_async.orchestration.network.members import (
    ADVERT_FRESH_S,
    MemberEgress,
    advert_key,
    decode_policy,
    encode_advert,
    encode_policy,
    fresh_adverts,
)

NOW = 1_800_000_000.0


def advert(member: str, at: float = NOW) -> str:
    return encode_advert(MemberEgress(member=member, at=at, inside=True, root="/run/coi/egress"))


def test_only_fresh_well_formed_adverts_of_their_own_member_count() -> None:
    config = {
        advert_key("m1"): advert("m1"),
        advert_key("m2"): advert("m2", at=NOW - ADVERT_FRESH_S - 1),  # its daemon went quiet
        advert_key("m3"): advert("m1"),  # names another member than its key
        advert_key("m4"): "{not json",
        advert_key("m5"): '{"member": "m5"}',  # fields missing
        advert_key("m6"): advert("m6", at=NOW + 10 * ADVERT_FRESH_S),  # from the future
        "user.other": advert("m1"),
        "core.https_address": "10.0.0.1:8443",
    }
    found = fresh_adverts(config, now=NOW)
    assert list(found) == ["m1"]
    assert found["m1"].inside
    assert found["m1"].root == "/run/coi/egress"


def test_a_carried_policy_comes_back_as_it_went() -> None:
    policy = Policy(
        mode="allowlist",
        allow_local_network_access=True,
        allow=parse_entries(["api.example.com", "*.pkg.example.org", "10.1.2.3:8080"]),
        deny=parse_entries(["bad.example.com"]),
    )
    assert decode_policy(encode_policy(policy)) == policy


def test_a_malformed_carried_policy_is_none_never_something_wider() -> None:
    good = msgspec.json.decode(encode_policy(Policy(mode="restricted")))
    for bad in (
        "",
        "[]",
        '{"mode": "wide-open"}',
        msgspec.json.encode({**good, "allow": ["not a host!"]}).decode(),
        msgspec.json.encode({**good, "surprise": True}).decode(),
        msgspec.json.encode({**good, "allow": ["a.example.com"] * 10_000}).decode(),  # too big
    ):
        assert decode_policy(bad) is None, bad
