"""The egress daemon itself: serve every registered session until stopped (or idle).

- Registrations (registry.py) are read every `RELOAD_S` and whenever `reload` is asked on the
  control socket; a session whose registration or config files changed gets its policy
  re-resolved, so edits reach running sessions within seconds, without a restart. A config that
  no longer resolves keeps the last good policy (and says so once in the daemon's log).
- Containers that are gone lose their registration, socket and log handle: at once when incusd
  reports a deletion on its event stream, and by a sweep every `SWEEP_S` in any case.
- A session the daemon listens for inside its container (egress/netns.py) is followed across
  restarts: its init's namespace is checked on every reload, and incusd's start events make the
  reload happen at once, so the listener moves into the new namespace and the old one is freed.
  A new init is found on the host (egress/container_init.py), else by asking incusd.
- SIGTERM, SIGINT, `coi egress stop`, or (started on demand) `idle_exit_s` without sessions end
  it; its sockets, control socket and pid file go with it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import msgspec

from coi_async.config import Config, config_paths
from coi_async.config.network import parse_entries
from coi_async.egress import control
from coi_async.egress.container_init import incus_lxcpath, init_on_host
from coi_async.egress.netns import Inside, namespace_of
from coi_async.egress.policy import Policy, as_mode
from coi_async.egress.server import EgressServer, SessionSpec, remove_stale_socket
from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.orchestration.events import Emit, ignore, note
from coi_async.orchestration.network import registry
from coi_async.orchestration.network.carried import CARRIED, CarriedSessions
from coi_async.orchestration.network.daemon import take_daemon_lock
from coi_async.orchestration.network.members import decode_policy
from coi_async.orchestration.network.paths import EgressPaths
from coi_async.orchestration.network.plan import session_policy
from coi_async.orchestration.network.registry import Registration
from coi_async.orchestration.runner import ItemContext, run_bulk
from coi_async.tools import get_tool

RELOAD_S = 1.0
SWEEP_S = 10.0
_EVENTS_RETRY_S = 5.0
# How many sessions' containers a reload asks incusd about at once, and for how long each: one
# that does not answer in time is not listened for until the next reload.
_LOCATE_WIDTH = 16
_LOCATE_S = 10.0
# The lifecycle events after which a carried session may have come, gone, moved or changed its
# policy; the many others (every exec and file read of every instance) change none of them, and
# each listing costs incusd as much as a hundred of them.
_CARRIED_CHANGES = frozenset(
    (
        "instance-created",
        "instance-deleted",
        "instance-renamed",
        "instance-updated",
        "instance-restored",
        "instance-migrated",
    )
)

# The config of a registration's session, as its coi would resolve it now.
ConfigOf = Callable[[Registration], Config]


class _Daemon:
    def __init__(
        self,
        paths: EgressPaths,
        incus: IncusClient,
        config_of: ConfigOf,
        emit: Emit,
        carried: CarriedSessions | None = None,
    ) -> None:
        self.paths = paths
        self.carried = carried
        self.incus = incus
        self.config_of = config_of
        self.emit = emit
        self.server = EgressServer()
        self.stop = anyio.Event()
        self.sweep_now = anyio.Event()
        self.started = time.time()
        self.last_session = time.monotonic()
        self._policies: dict[str, tuple[tuple[object, ...], Policy]] = {}
        self._places: dict[str, Inside] = {}
        self._lxcpath: str | None = None  # "" once known to be of no use
        # Registrations whose containers were not running when last asked: asked again only
        # once incusd reports a start, or by the sweep (a stopped persistent session costs no
        # request a second).
        self._not_running: set[str] = set()
        self._reload_lock = anyio.Lock()
        self._reloads_begun = 0
        self._last_reload_ok = False
        self.reload_now = anyio.Event()

    def _policy(self, registration: Registration) -> Policy:
        build = registration.kind == "build"
        cwd, home, env = registration.cwd, registration.home, registration.env
        files = (
            []
            if build or registration.kind == CARRIED
            else [path for path, _ in config_paths(env, home=home, cwd=cwd)]
        )
        stamp = registry.fingerprint(registration, files)
        known = self._policies.get(registration.key)
        if known is not None and known[0] == stamp:
            return known[1]
        mode = as_mode(registration.mode)
        try:
            if build:
                policy = Policy(mode="allowlist", allow=parse_entries(registration.allow))
            elif registration.kind == CARRIED:
                carried = decode_policy(registration.carried)
                if carried is None:
                    raise ValueError("its carried policy is malformed")
                policy = carried
            else:
                config = self.config_of(registration)
                policy = session_policy(
                    config.network,
                    get_tool(registration.tool or config.tool.name),
                    mode,
                    allow=registration.allow,
                    deny=registration.deny,
                )
        except (CoiError, ValueError) as exc:
            note(self.emit, "egress.policy-error", registration.container, level="warning", error=str(exc))
            # The last good policy stays; a session never seen yet gets its mode with no extras.
            policy = known[1] if known is not None else Policy(mode=mode)
        self._policies[registration.key] = (stamp, policy)
        return policy

    async def _host_lxcpath(self) -> str | None:
        """Where this machine's incusd keeps its containers for LXC, once asked; None when
        incusd is not here to look at (container_init.py)."""
        if self._lxcpath is None and not self.incus.remote:
            try:
                info = await self.incus.server_info(cached=True)
            except CoiError:
                return None
            self._lxcpath = incus_lxcpath(info.environment.server_pid) or ""
        return self._lxcpath or None

    async def _inside(self, registration: Registration, lxcpath: str | None) -> Inside | None:
        """Where the session's listener inside its container goes: its init's namespace, as long
        as that init lives (a restart makes a new one); None while it is not running. The init
        is looked for on the host first, under `lxcpath`."""
        if not registration.inside_port:
            return None
        known = self._places.get(registration.key)
        if known is not None and known.port == registration.inside_port and known.current():
            return known
        self._places.pop(registration.key, None)
        if registration.key in self._not_running:
            return None  # until an instance starts, or the next sweep
        found = None
        if lxcpath is not None:
            found = await anyio.to_thread.run_sync(
                init_on_host, lxcpath, registration.project, registration.container
            )
        if found is None:  # the host cannot tell: incusd can
            try:
                state = await self.incus.in_project(registration.project).get_instance_state(
                    registration.container
                )
            except CoiError:
                return None
            running = state.status == "Running" and state.pid > 0
            found = (state.pid, namespace_of(state.pid)) if running else None
        if found is None or not found[1]:
            self._not_running.add(registration.key)
            return None
        place = Inside(pid=found[0], inode=found[1], port=registration.inside_port)
        self._places[registration.key] = place
        return place

    async def reload(self) -> None:
        async with self._reload_lock:
            await self._reload_held()

    async def reload_asked(self) -> None:
        """A reload for a coi that has just changed the registrations: one that began after it
        asked (and went well) reads them too, so cois that ask together (a fork -n 4) share it
        instead of queueing for one each."""
        asked = self._reloads_begun
        async with self._reload_lock:
            if self._reloads_begun > asked and self._last_reload_ok:
                return
            await self._reload_held()

    async def _reload_held(self) -> None:
        self._reloads_begun += 1
        self._last_reload_ok = False
        found = registry.read_all(self.paths)
        if self.carried is not None:
            await self.carried.refresh()
            found = {**self.carried.found, **found}
        places: dict[str, Inside | None] = {}
        lxcpath = await self._host_lxcpath() if any(r.inside_port for r in found.values()) else None

        async def locate(item: ItemContext) -> None:
            places[item.name] = await self._inside(found[item.name], lxcpath)

        # All at once: where the host cannot tell a container's init, asking incusd for its
        # state costs tens of milliseconds, more while containers boot, and sessions started
        # together (a fork -n 4) would otherwise wait for each other's.
        await run_bulk(list(found), locate, limit=_LOCATE_WIDTH, per_item_s=_LOCATE_S)
        specs = [
            SessionSpec(
                key=r.key,
                socket=r.socket,
                container=r.container,
                project=r.project,
                policy=self._policy(r),
                log=r.log,
                inside=places.get(r.key),
            )
            for r in found.values()
        ]
        for known in (self._policies, self._places):
            for key in [k for k in known if k not in found]:
                del known[key]
        await self.server.apply(specs)
        if specs:
            self.last_session = time.monotonic()
        if self.carried is not None:
            await self.carried.mark_served({k: p.pid for k, p in self._places.items()})
        self._last_reload_ok = True

    async def sweep(self) -> None:
        """Forget the sessions whose containers are gone; incusd's errors skip a round."""
        by_project: dict[str, list[Registration]] = {}
        for r in registry.read_all(self.paths).values():
            by_project.setdefault(r.project, []).append(r)
        gone: list[str] = []
        for project, registrations in by_project.items():
            try:
                names = {i.name for i in await self.incus.in_project(project).list_instances()}
            except CoiError:
                continue
            gone += [r.key for r in registrations if r.container not in names]
        if gone:
            registry.remove(self.paths, gone)
        if self.carried is not None:
            self.carried.dirty = True
        if gone or self._not_running or self.carried is not None:
            self._not_running.clear()
            await self.reload()

    async def dispatch(self, command: str) -> dict[str, Any]:
        if command == "ping":
            return {"ok": True, "pid": os.getpid()}
        if command == "reload":
            if self.stop.is_set():
                return {"ok": False, "error": "stopping"}  # the caller starts a new one
            await self.reload_asked()
            return {"ok": True, "sessions": len(self.server.sessions)}
        if command == "status":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return {
                "ok": True,
                "pid": os.getpid(),
                "root": str(self.paths.root),
                "uptime_s": round(time.time() - self.started, 1),
                "rss_kb": usage.ru_maxrss,
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                "sessions": self._session_status(),
            }
        if command == "stop":
            self.stop.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def _session_status(self) -> list[dict[str, Any]]:
        found = {**(self.carried.found if self.carried is not None else {}), **registry.read_all(self.paths)}
        sessions = self.server.status()
        for session in sessions:
            known = found.get(str(session["key"]))
            session["way"] = "inside" if known is not None and known.inside_port else "proxy-device"
        return sessions

    async def reload_loop(self) -> None:
        while True:
            with anyio.move_on_after(RELOAD_S):
                await self.reload_now.wait()
            self.reload_now = anyio.Event()
            await self.reload()

    async def sweep_loop(self) -> None:
        while True:
            with anyio.move_on_after(SWEEP_S):
                await self.sweep_now.wait()
            self.sweep_now = anyio.Event()
            await self.sweep()

    async def watch_instances(self) -> None:
        """Sweep as soon as incusd says an instance went (or was renamed away); reload as soon as
        one started, so a listener inside a restarted container is back at once."""
        while True:
            with contextlib.suppress(CoiError):
                async with self.incus.events(("lifecycle",), all_projects=True) as stream:
                    async for event in stream:
                        action = _action(event.metadata)
                        if self.carried is not None and action in _CARRIED_CHANGES:
                            # A session carrying its policy may have come, gone or changed.
                            self.carried.dirty = True
                            self.reload_now.set()
                        if action in ("instance-deleted", "instance-renamed"):
                            self.sweep_now.set()
                        elif action in ("instance-started", "instance-restarted"):
                            self._not_running.clear()
                            self.reload_now.set()
            await anyio.sleep(_EVENTS_RETRY_S)

    async def idle_exit(self, idle_s: float) -> None:
        while True:
            await anyio.sleep(min(idle_s, 5.0))
            idle = not self.server.sessions and not registry.read_all(self.paths)
            if idle and time.monotonic() - self.last_session >= idle_s:
                note(self.emit, "egress.idle-exit", seconds=f"{idle_s:g}")
                self.stop.set()
                return

    async def signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            async for signum in received:
                note(self.emit, "egress.signal", signal=str(signum))
                self.stop.set()
                return


def _action(raw: Any) -> str:
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return ""
    return str(decoded.get("action", "")) if isinstance(decoded, dict) else ""


async def serve_daemon(
    paths: EgressPaths,
    incus: IncusClient,
    config_of: ConfigOf,
    *,
    idle_exit_s: float | None = None,
    lock_wait_s: float = 0.0,
    serve_members: bool = False,
    inside: bool = False,
    emit: Emit = ignore,
) -> None:
    """Run the daemon until stopped. EgressDaemonRunningError when another one runs for the same
    directory (after `lock_wait_s`, for one that is on its way out). With `serve_members` it also
    serves the sessions launched over a remote onto its incusd's member, and advertises that
    (carried.py), listening inside their containers when `inside`."""
    paths.make()
    lock = await take_daemon_lock(paths, wait_s=lock_wait_s)
    try:
        paths.pid_file.write_text(f"{os.getpid()}\n")
        remove_stale_socket(str(paths.control))
        carried = CarriedSessions(incus, paths, inside=inside) if serve_members else None
        if carried is not None:
            await carried.identify()
        daemon = _Daemon(paths, incus, config_of, emit, carried)
        control_listener = await anyio.create_unix_listener(str(paths.control), mode=0o600)
        note(emit, "egress.serving", root=str(paths.root), pid=str(os.getpid()))
        async with daemon.server.running(), anyio.create_task_group() as tg:
            # Advertised at once, not after the first reload: a session placed on the member
            # meanwhile is found by the reload that its instance's events bring.
            if carried is not None:
                tg.start_soon(carried.advertise, emit)
            await daemon.reload()
            async with control_listener:
                tg.start_soon(control.serve_control, control_listener, daemon.dispatch)
                tg.start_soon(daemon.reload_loop)
                tg.start_soon(daemon.sweep_loop)
                tg.start_soon(daemon.watch_instances)
                tg.start_soon(daemon.signals)
                if idle_exit_s is not None:
                    tg.start_soon(daemon.idle_exit, idle_exit_s)
                await daemon.stop.wait()
                tg.cancel_scope.cancel()
    finally:
        if carried is not None:
            await carried.withdraw()
        with contextlib.suppress(OSError, CoiError):
            remove_stale_socket(str(paths.control))
        with contextlib.suppress(OSError):
            paths.pid_file.unlink()
        os.close(lock)
        note(emit, "egress.stopped")
