"""The member's side of egress over a remote (members.py): the daemon an operator runs beside an
incusd serves the sessions other coi processes launched there, and says that it does.

- `identify`: which member (or standalone server) this daemon is beside.
- `refresh`: the sessions on this member that carry a policy, as registrations the daemon
  serves like its own files' (only when something changed: incusd's events and the sweep say
  so). A session whose carried policy does not decode is served with its mode's defaults and
  no extras: never wider than what it asked for.
- `mark_served`: each of them told, on its instance, that it is served and where.
- `advertise` / `withdraw`: the member's advert kept fresh while the daemon runs, and removed
  when it stops.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping

import anyio

from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.incus.models import InstancePatch
from coi_async.orchestration.events import Emit, ignore, note
from coi_async.orchestration.network import members
from coi_async.orchestration.network.members import (
    KEY_POLICY,
    KEY_SERVED,
    SERVED_SOCKET,
    MemberEgress,
    served_value,
)
from coi_async.orchestration.network.paths import EgressPaths, session_key
from coi_async.orchestration.network.plan import EGRESS_PORT, KEY_NETWORK
from coi_async.orchestration.network.registry import Registration
from coi_async.orchestration.retry import Retry

CARRIED = "carried"
_WITHDRAW_S = 5.0
_RETRY_FIRST_S = 0.5
_ADVERT_S = 10.0  # an advert incusd has not taken by then is sent again


class CarriedSessions:
    def __init__(self, incus: IncusClient, paths: EgressPaths, *, inside: bool) -> None:
        self.incus = incus
        self.paths = paths
        self.inside = inside
        self.member = ""
        self.clustered = False
        self.dirty = True
        self.found: dict[str, Registration] = {}
        self._served: dict[str, str] = {}  # key: what its instance was last told

    async def identify(self) -> None:
        info = await self.incus.server_info()
        self.member = info.environment.server_name
        self.clustered = info.environment.server_clustered

    async def refresh(self) -> None:
        """The registrations of the carried sessions, listed again if something changed; incusd's
        errors keep the last ones for a round."""
        if not self.dirty:
            return
        self.dirty = False
        try:
            instances = await self.incus.list_instances(all_projects=True)
        except CoiError:
            self.dirty = True
            return
        found: dict[str, Registration] = {}
        for inst in instances:
            carried = inst.config.get(KEY_POLICY)
            if carried is None or (self.clustered and inst.location != self.member):
                continue
            key = session_key(inst.project or "default", inst.name)
            found[key] = Registration(
                key=key,
                container=inst.name,
                project=inst.project or "default",
                mode=inst.config.get(KEY_NETWORK, "restricted"),
                socket=str(self.paths.socket_of(key)),
                cwd="",
                home="",
                inside_port=EGRESS_PORT if self.inside else 0,
                kind=CARRIED,
                carried=carried,
            )
            self._served.setdefault(key, inst.config.get(KEY_SERVED, ""))
        for key in [k for k in self._served if k not in found]:
            del self._served[key]
        self.found = found

    async def mark_served(self, listening_in: Mapping[str, int]) -> None:
        """Tell each carried session it is served, and with which policy: `listening_in` maps a
        key to the init pid the listener is in (sessions inside); a proxy-device session is
        served once registered."""
        for key, registration in self.found.items():
            where = str(listening_in.get(key, 0) or "") if self.inside else SERVED_SOCKET
            if not where:
                continue  # not running, or not listened for yet
            value = served_value(where, registration.carried)
            if self._served.get(key) == value:
                continue
            try:
                await self.incus.in_project(registration.project).update_instance(
                    registration.container, InstancePatch(config={KEY_SERVED: value})
                )
            except CoiError:
                continue  # gone, or incusd busy: the next reload tries again
            self._served[key] = value

    def advert(self) -> MemberEgress:
        return MemberEgress(
            member=self.member, at=time.time(), inside=self.inside, root=str(self.paths.root), pid=os.getpid()
        )

    async def advertise(self, emit: Emit = ignore) -> None:
        """Keep the advert fresh until cancelled. One that incusd refused or kept waiting (a
        cluster still settling, a busy member) is sent again soon, not a whole period later:
        until it lands, no coi places a session that needs this daemon on this member."""
        key = members.advert_key(self.member)
        retry = Retry(_RETRY_FIRST_S, members.ADVERT_EVERY_S)
        advertised = False
        while True:
            try:
                with anyio.fail_after(_ADVERT_S):
                    await self.incus.update_server_config({key: members.encode_advert(self.advert())})
            except (CoiError, TimeoutError) as e:
                error = str(e) if isinstance(e, CoiError) else f"incusd did not answer in {_ADVERT_S:g} s"
                note(emit, "egress.advert-failed", level="warning", member=self.member, error=error)
                await anyio.sleep(retry.next_pause())
                continue
            if not advertised:
                advertised = True
                note(emit, "egress.advertised", member=self.member)
            retry.succeeded()
            await anyio.sleep(members.ADVERT_EVERY_S)

    async def withdraw(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_WITHDRAW_S), contextlib.suppress(CoiError):
            await self.incus.update_server_config({members.advert_key(self.member): ""})
