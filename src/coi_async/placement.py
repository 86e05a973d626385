"""Where on a cluster a new session goes: `--target MEMBER` or `[placement] policy`. Pure.

- `spread` (the default): the online member with the fewest coi sessions running (or being
  made: a kept, stopped container does not count), ties broken by the most free memory (less
  than 1 GiB or a tenth of a member's memory short of the most is a tie: members on one
  machine, or alike, tie), then by the slot: the members in name order are looked at from the
  ((S-1) mod N)-th on for slot S, and the first tied one wins. Launches that all see the same
  counts at once (ten `coi shell --background` started together) so go round the members by
  slot instead of piling onto one, and one that sees some of the others already placed mostly
  still picks the member the round gives it. A launch that loses a slot to another one counts
  that slot on the member it would have chosen for it (`with_placed`) before choosing for the
  next slot: every launch that saw the same counts so agrees on where each slot went.
- `pack`: the online member with the most coi sessions among those with room (free memory at
  least a tenth of its total), ties broken as for spread; when none has room, spread's choice.
- `member:NAME`: always NAME, as `--target NAME` is.

A named member must exist and be online. Placement applies only to a clustered server; on a
standalone one `--target` is an error and the policy does nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import msgspec

from coi_async.errors import EgressError, UsageError

SPREAD = "spread"
PACK = "pack"
MEMBER_PREFIX = "member:"
POLICIES = (SPREAD, PACK, f"{MEMBER_PREFIX}NAME")
DEFAULT_POLICY = SPREAD
ONLINE = "Online"
_GIB = 1 << 30
# pack: a member has room while its free memory is at least this share of its total.
ROOM_SHARE = 0.1


class MemberLoad(msgspec.Struct, frozen=True, kw_only=True):
    """One cluster member as placement sees it."""

    name: str
    status: str  # incusd's: Online, Offline, Evacuated, ...
    sessions: int = 0  # coi sessions running or being made there
    free_memory: int = 0  # bytes; 0 when its state could not be read
    total_memory: int = 0

    @property
    def online(self) -> bool:
        return self.status == ONLINE


def check_policy(policy: str) -> str:
    """`policy` if it is one; a ValueError naming the choices otherwise."""
    if policy in (SPREAD, PACK):
        return policy
    if policy.startswith(MEMBER_PREFIX) and policy[len(MEMBER_PREFIX) :].strip():
        return policy
    raise ValueError(f"expected {', '.join(POLICIES[:-1])} or {POLICIES[-1]}, got '{policy}'")


def fixed_member(policy: str, target: str = "") -> str:
    """The member a launch must go to (`--target` first, else `member:NAME`); "" when a policy
    chooses."""
    if target:
        return target
    if policy.startswith(MEMBER_PREFIX):
        return policy[len(MEMBER_PREFIX) :].strip()
    return ""


def check_member(name: str, members: Sequence[MemberLoad]) -> str:
    """`name` if it is an online member; UsageError otherwise (naming the members)."""
    by_name = {m.name: m for m in members}
    if name not in by_name:
        known = ", ".join(sorted(by_name)) or "none"
        raise UsageError(f"unknown cluster member '{name}' (members: {known})")
    if not by_name[name].online:
        raise UsageError(f"cluster member '{name}' is {by_name[name].status.lower()}, not online")
    return name


def choose(
    policy: str,
    members: Sequence[MemberLoad],
    *,
    slot: int,
    target: str = "",
    only: Collection[str] | None = None,
) -> str:
    """The member for a new session in `slot` (see the module docstring), one of `only` if
    given (the members whose egress daemon can serve it): EgressError when it cannot be."""
    if fixed := fixed_member(policy, target):
        check_member(fixed, members)
        if only is not None and fixed not in only:
            raise EgressError(
                f"cluster member '{fixed}' runs no coi egress daemon, so this session cannot go "
                f"there: start `coi egress serve` on it, or pick one of: {', '.join(sorted(only)) or 'none'}"
            )
        return fixed
    online = sorted((m for m in members if m.online), key=lambda m: m.name)
    if not online:
        raise UsageError("no cluster member is online")
    if only is not None:
        online = [m for m in online if m.name in only]
        if not online:
            raise EgressError(
                "no online cluster member runs a coi egress daemon, which this session needs: "
                "start `coi egress serve` on them, or use --network open"
            )
    if policy == PACK:
        roomy = [m for m in online if m.free_memory >= ROOM_SHARE * m.total_memory]
        if roomy:
            return _pick(roomy, slot, busiest=True)
    return _pick(online, slot, busiest=False)


def with_placed(members: Sequence[MemberLoad], name: str) -> tuple[MemberLoad, ...]:
    """`members` with one more session on `name`: a slot lost to a racing launch, counted where
    that launch will have put it."""
    return tuple(
        msgspec.structs.replace(m, sessions=m.sessions + 1) if m.name == name else m for m in members
    )


def _pick(members: list[MemberLoad], slot: int, *, busiest: bool) -> str:
    sessions = [m.sessions for m in members]
    level = max(sessions) if busiest else min(sessions)
    even = [m for m in members if m.sessions == level]
    most = max(m.free_memory for m in even)
    tied = {m.name for m in even if most - m.free_memory <= max(_GIB, m.total_memory // 10)}
    start = (max(slot, 1) - 1) % len(members)
    in_turn = members[start:] + members[:start]
    return next(m.name for m in in_turn if m.name in tied)
