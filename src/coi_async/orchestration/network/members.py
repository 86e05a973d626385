"""Egress for sessions on a remote server or cluster member: what travels through incusd.

A coi that talks to a remote cannot reach the egress daemon beside that server's incusd, nor
write its registrations. So the daemon an operator runs there (`coi egress serve`) and the coi
that launches sessions meet in incusd's own state:

- **Adverts.** The daemon keeps `user.coi.egress.member.<NAME>` in the server's config (a
  cluster shares it between its members) fresh, NAME being its member's (or standalone
  server's) name: when it last said so, whether it listens inside containers, its directory.
  An advert older than `ADVERT_FRESH_S` counts as no daemon.
- **Carried policy.** A session over a remote gets its resolved policy in `KEY_POLICY` on its
  instance (the launching coi read the config; the daemon cannot), which the daemon of the
  member it runs on serves.
- **Served.** That daemon puts `KEY_SERVED` on the instance once it serves it: where (the init's
  pid it listens inside, or `socket` for a proxy device) and a digest of the policy it serves.
  The launching coi, and `coi network allow|deny` after a change, wait for it.

Everything read here was written by someone else: decoded strictly and bounded, and anything
malformed counts as absent (no daemon, no policy), never as something wider.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from coi_async.config.network import HostSyntaxError, parse_entries
from coi_async.egress.policy import Mode, Policy

ADVERT_PREFIX = "user.coi.egress.member."
KEY_POLICY = "user.coi.egress.policy"
KEY_SERVED = "user.coi.egress.served"
SERVED_SOCKET = "socket"
# The daemon says it again this often; a coi believes an advert this long (clocks of a
# server's members and its clients agree to well within the difference).
ADVERT_EVERY_S = 30.0
ADVERT_FRESH_S = 90.0
_MAX_VALUE = 64 * 1024


class MemberEgress(msgspec.Struct, frozen=True, kw_only=True):
    """One member's daemon, as it advertises itself."""

    member: str
    at: float  # unix time of the advert
    inside: bool  # listens inside containers (else: sessions reach it through a proxy device)
    root: str  # its directory there (the proxy devices' sockets are in it)
    pid: int = 0


class CarriedPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A session's policy as resolved by the coi that launched it."""

    mode: Mode
    block_private_networks: bool = True
    block_metadata_endpoint: bool = True
    allow_local_network_access: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @classmethod
    def of(cls, policy: Policy) -> CarriedPolicy:
        return cls(
            mode=policy.mode,
            block_private_networks=policy.block_private_networks,
            block_metadata_endpoint=policy.block_metadata_endpoint,
            allow_local_network_access=policy.allow_local_network_access,
            allow=tuple(str(e) for e in policy.allow),
            deny=tuple(str(e) for e in policy.deny),
        )

    def policy(self) -> Policy:
        """The policy; HostSyntaxError for an entry that does not parse."""
        return Policy(
            mode=self.mode,
            block_private_networks=self.block_private_networks,
            block_metadata_endpoint=self.block_metadata_endpoint,
            allow_local_network_access=self.allow_local_network_access,
            allow=parse_entries(self.allow),
            deny=parse_entries(self.deny),
        )


_ADVERT = msgspec.json.Decoder(MemberEgress)
_POLICY = msgspec.json.Decoder(CarriedPolicy)


def advert_key(member: str) -> str:
    return f"{ADVERT_PREFIX}{member}"


def encode_advert(advert: MemberEgress) -> str:
    return msgspec.json.encode(advert).decode()


def fresh_adverts(server_config: Mapping[str, Any], *, now: float | None = None) -> dict[str, MemberEgress]:
    """The members whose daemon advertised itself lately, by member name."""
    now = time.time() if now is None else now
    found: dict[str, MemberEgress] = {}
    for key, value in server_config.items():
        if not key.startswith(ADVERT_PREFIX) or not isinstance(value, str) or len(value) > _MAX_VALUE:
            continue
        try:
            advert = _ADVERT.decode(value)
        except msgspec.DecodeError:
            continue
        member = key[len(ADVERT_PREFIX) :]
        if advert.member == member and now - ADVERT_FRESH_S <= advert.at <= now + ADVERT_FRESH_S:
            found[member] = advert
    return found


def served_value(where: str, carried: str) -> str:
    """`KEY_SERVED` for a session served at `where` (a pid, or SERVED_SOCKET) with `carried`."""
    return f"{where}:{hashlib.sha256(carried.encode()).hexdigest()[:16]}"


def changed_policy(carried: str, entry: str, *, allow: bool) -> str:
    """`carried` with `entry` allowed or denied (the other list loses it); ValueError when
    `carried` is not a carried policy."""
    try:
        current = _POLICY.decode(carried)
    except msgspec.DecodeError:
        raise ValueError("malformed carried policy") from None
    allowed = [e for e in current.allow if e != entry]
    denied = [e for e in current.deny if e != entry]
    (allowed if allow else denied).append(entry)
    changed = msgspec.structs.replace(current, allow=tuple(allowed), deny=tuple(denied))
    return msgspec.json.encode(changed).decode()


def encode_policy(policy: Policy) -> str:
    return msgspec.json.encode(CarriedPolicy.of(policy)).decode()


def decode_policy(text: str) -> Policy | None:
    """The carried policy in `text`; None when it is not one."""
    if len(text) > _MAX_VALUE:
        return None
    try:
        return _POLICY.decode(text).policy()
    except (msgspec.DecodeError, HostSyntaxError, ValueError):
        return None
