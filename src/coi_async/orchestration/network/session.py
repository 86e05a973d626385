"""A session's egress on every start path: planned before launch, attached after it.

1. `plan_egress` (before the launch): the mode, the NICs the default profile would give the
   container, and whether the session goes through the daemon (plan.py). The launch puts the
   masks, the proxy device and the config keys on the instance when it creates it
   (instance_spec.py), and `prepare_reused` puts them on a stopped persistent container before
   it starts again.
2. `attach_egress` (after it, also for a container found running): the daemon running, the
   session registered and its socket listening, the instance checked to have no NIC left (a
   profile changed between plan and create, a container from before) and its devices current.
3. `configure_container` (once it has booted): the places tools read the proxy from when the
   environment is not passed (/etc/environment, apt, npm, git) written inside.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
import msgspec

from coi_async.config import Config
from coi_async.egress import control
from coi_async.egress.policy import as_mode
from coi_async.errors import CoiError, EgressError, NotFoundError, SessionError
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance, InstancePatch
from coi_async.orchestration.events import Emit, ignore, note
from coi_async.orchestration.network import registry
from coi_async.orchestration.network.daemon import ensure_daemon, ping
from coi_async.orchestration.network.members import KEY_POLICY
from coi_async.orchestration.network.paths import EgressPaths, session_key
from coi_async.orchestration.network.plan import (
    EGRESS_DEVICE,
    EGRESS_PORT,
    EGRESS_URL,
    KEY_MASKED,
    NO_PROXY,
    EgressPlan,
    egress_config,
    egress_device,
    may_listen_inside,
    nic_names,
    proxied,
)
from coi_async.orchestration.network.registry import Registration
from coi_async.orchestration.network.remote_session import await_served, plan_remote

_DEFAULT_PROFILE = "default"
_RELOAD_ATTEMPTS = 3


@asynccontextmanager
async def start_daemon_early(plan: EgressPlan | None) -> AsyncIterator[None]:
    """Start the daemon while the body (a launch) runs, so a session does not wait for both.

    A failure to start is not raised here: `attach_egress` tries again and raises it, once the
    caller knows the container and can clean it up.
    """
    async with anyio.create_task_group() as tg:
        if plan is not None and plan.through_daemon and not plan.remote:

            async def start() -> None:
                with contextlib.suppress(CoiError):
                    await ensure_daemon(plan.paths)

            tg.start_soon(start)
        yield


async def plan_egress(
    incus: IncusClient, config: Config, *, env: Mapping[str, str] | None = None
) -> EgressPlan:
    """The plan for a session launched with the default profile, in the config's mode (over a
    remote: remote_session.py's)."""
    mode = as_mode(config.network.mode)
    try:
        nics = nic_names((await incus.get_profile(_DEFAULT_PROFILE)).devices)
    except NotFoundError:
        nics = []
    if incus.remote:
        return await plan_remote(incus, config, mode, nics)
    through = proxied(mode, nics)
    root = str(EgressPaths.for_environment(env).make().root) if through else ""
    inside = through and may_listen_inside(env)
    return EgressPlan(
        mode=mode, project=incus.project, nics=tuple(nics), through_daemon=through, inside=inside, root=root
    )


def _patch(plan: EgressPlan, instance: Instance) -> InstancePatch | None:
    """What the instance lacks of the plan: masks for every NIC it has, the proxy device as
    planned, the config keys; None when it has it all."""
    devices: dict[str, dict[str, str]] = {}
    config: dict[str, str] = {}
    if plan.through_daemon:
        nics = nic_names(instance.expanded_devices)
        devices.update({name: {"type": "none"} for name in nics})
        wanted = egress_device(plan.socket_of(instance.name), inside=plan.inside)
        current = instance.expanded_devices.get(EGRESS_DEVICE, {})
        if any(current.get(k) != v for k, v in wanted.items()):
            devices[EGRESS_DEVICE] = wanted
        masked = sorted({*instance.config.get(KEY_MASKED, "").split(","), *nics} - {""})
        wanted_config = egress_config(plan.mode, masked, through_daemon=True)
        if plan.carried:
            wanted_config[KEY_POLICY] = plan.carried
    else:
        wanted_config = egress_config(plan.mode, [], through_daemon=False)
    config = {k: v for k, v in wanted_config.items() if instance.config.get(k) != v}
    if not devices and not config:
        return None
    return InstancePatch(devices=devices or None, config=config or None)


async def prepare_reused(incus: IncusClient, plan: EgressPlan | None, name: str) -> None:
    """Before a stopped container starts again: its NICs masked and its egress as planned."""
    if plan is None:
        return
    instance = await incus.get_instance(name)
    if plan.needs_member:
        plan = plan.on_member(instance.location)
    patch = _patch(plan, instance)
    if patch is not None:
        await incus.update_instance(name, patch)


def session_log(config: Config, project: str, container: str) -> str:
    """The connection log of a session; "" when logging is off."""
    logging = config.network.logging
    if not logging.enabled:
        return ""
    return os.path.join(os.path.dirname(logging.path), "network", project, f"{container}.jsonl")


class SessionOrigin(msgspec.Struct, frozen=True, kw_only=True):
    """Where the session's coi read its config (so the daemon can read it again)."""

    cwd: str
    home: str
    env: dict[str, str] = {}
    profile: str = ""

    @classmethod
    def here(cls, profile: str = "") -> SessionOrigin:
        return cls(
            cwd=os.getcwd(),
            home=os.path.expanduser("~"),
            env=registry.config_env(os.environ),
            profile=profile,
        )


async def attach_egress(
    incus: IncusClient,
    config: Config,
    plan: EgressPlan | None,
    name: str,
    origin: SessionOrigin,
    *,
    created: bool,
    emit: Emit = ignore,
    checked: Instance | None = None,
) -> None:
    """Have the session's egress working (see the module docstring). SessionError when a new
    container has a NIC it must not have (the caller removes it). `checked`: the instance as
    `checked_instance` returned it, when the caller checked it first."""
    if plan is None:
        return
    instance = checked or await checked_instance(incus, plan, name, created=created)
    if plan.needs_member:
        plan = plan.on_member(instance.location)
    patch = _patch(plan, instance)
    if patch is not None:
        # Before the daemon is told: a proxy device from an earlier start holds the port inside.
        note(emit, "egress.devices-updated", name)
        await incus.update_instance(name, patch)
    if plan.remote and plan.through_daemon:
        await await_served(incus, name, plan.carried, inside=plan.inside)
    elif plan.through_daemon:
        await _register(config, plan, name, origin, keep_live=not created)


async def checked_instance(incus: IncusClient, plan: EgressPlan, name: str, *, created: bool) -> Instance:
    """The session's container, once it is known to have no NIC but the plan's: SessionError
    when a new one has another (its profile changed while it was made). Nothing of the host's
    may go into a container before this."""
    instance = await incus.get_instance(name)
    if created and plan.through_daemon and set(nic_names(instance.expanded_devices)) - set(plan.nics):
        raise SessionError(
            f"container {name} was given a network interface the session must not have",
            hint="its profile changed while it was made; try again",
        )
    return instance


async def _register(
    config: Config, plan: EgressPlan, name: str, origin: SessionOrigin, *, keep_live: bool
) -> None:
    paths = plan.paths
    await ensure_daemon(paths)
    key = session_key(plan.project, name)
    previous = registry.read(paths.registration_of(key)) if keep_live else None
    registration = Registration(
        key=key,
        container=name,
        project=plan.project,
        mode=plan.mode,
        socket=plan.socket_of(name),
        log=session_log(config, plan.project, name),
        cwd=origin.cwd,
        home=origin.home,
        env=origin.env,
        profile=origin.profile,
        allow=previous.allow if previous else (),
        deny=previous.deny if previous else (),
        inside_port=EGRESS_PORT if plan.inside else 0,
        tool=config.tool.name,
    )
    registry.write(paths, registration)
    await reload_daemon(paths)


async def revive_daemon(env: Mapping[str, str] | None = None) -> bool:
    """Start the daemon again if sessions are registered and it does not answer (it was killed,
    or the machine's runtime directory survived it); whether it had to be started. Cheap when
    there is nothing to do: a directory listing and, if it has entries, one ping."""
    paths = EgressPaths.for_environment(env)
    if not registry.read_all(paths) or await ping(paths) is not None:
        return False
    await ensure_daemon(paths)
    return True


async def reload_daemon(paths: EgressPaths) -> None:
    """Have the daemon serve the registrations as they are now (before this returns).

    A daemon can be on its way out (idle) between the ping and the reload: then a new one is
    started and asked again."""
    error: object = ""
    for _ in range(_RELOAD_ATTEMPTS):
        await ensure_daemon(paths)
        try:
            reply = await control.call(str(paths.control), "reload")
        except EgressError as exc:
            error = exc
        else:
            if reply.get("ok"):
                return
            error = reply.get("error", reply)
        await anyio.sleep(0.1)
    raise EgressError(f"the egress daemon did not take the session: {error}")


async def detach_egress(plan: EgressPlan | None, name: str) -> None:
    """The session is over: its registration goes, and with it its socket and log handle."""
    if plan is None or not plan.through_daemon or plan.remote:
        return  # a remote's daemon forgets a session whose container went by itself
    paths = plan.paths
    registry.remove(paths, [session_key(plan.project, name)])
    with anyio.move_on_after(5, shield=True):
        try:
            await control.call(str(paths.control), "reload")
        except CoiError:
            pass  # the daemon's own sweep removes it then


# Run as root inside the container, once per start: loopback up, and the proxy for the tools that
# are not given the environment (sudo resets it, services never had it). Idempotent: our lines
# are replaced.
_CONFIGURE = r"""
url=$1 no_proxy=$2
# The proxy device listens on the container's loopback; an init that never brings it up (no NIC,
# nothing to configure) leaves 127.0.0.1 unreachable.
ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null || true
set_lines() { # file, pattern of our lines, the lines
    f=$1; pattern=$2; shift 2
    { [ -f "$f" ] && grep -v -i -E "$pattern" "$f"; printf '%s\n' "$@"; } >"$f.coi-new" && mv "$f.coi-new" "$f"
}
set_lines /etc/environment '^(http|https|no)_proxy=' \
    "http_proxy=$url" "https_proxy=$url" "no_proxy=$no_proxy" \
    "HTTP_PROXY=$url" "HTTPS_PROXY=$url" "NO_PROXY=$no_proxy"
if [ -d /etc/apt/apt.conf.d ]; then
    printf 'Acquire::http::Proxy "%s";\nAcquire::https::Proxy "%s";\nAcquire::http::Pipeline-Depth "0";\n' \
        "$url" "$url" >/etc/apt/apt.conf.d/99coi-egress
fi
for prefix in /usr /usr/local; do
    if [ -x "$prefix/bin/npm" ]; then
        mkdir -p "$prefix/etc"
        set_lines "$prefix/etc/npmrc" '^(https-)?proxy=' "proxy=$url" "https-proxy=$url"
    fi
done
if command -v git >/dev/null 2>&1; then
    git config --system http.proxy "$url" && git config --system https.proxy "$url"
fi
exit 0
"""


async def configure_container(incus: IncusClient, name: str) -> None:
    command = ["sh", "-c", _CONFIGURE, "coi-egress", EGRESS_URL, NO_PROXY]
    result = await incus.exec(name, command)
    if not result.ok:
        detail = result.stderr.decode(errors="replace").strip()[:200] or f"exit {result.exit_code}"
        raise SessionError(f"cannot write the proxy settings in {name}: {detail}")
