"""Image builds: a recipe run as root in a throwaway container, published as a versioned image.

Phases: base (make sure the base image exists), launch (a uniquely named build container), recipe
(the script, its output streamed), publish (stop, publish uncompressed as `<alias>-YYYYMMDD-HHMMSS`,
move `<alias>` to it). The build container is deleted on every exit path, Ctrl-C included, and the
alias moves only after a successful publish, so a failed build leaves the previous image as it was.

A build container without a network interface gets egress through the egress daemon, as a
session does (orchestration/network/build_egress.py), with the build's allowlist as its policy.

Progress goes out as events (the item is the alias being built): each phase is a `StepStarted`
(step = the phase, detail = what it works on) and a `StepFinished`; the recipe's output is
`Output`; everything else is a `Note` whose kind is one of the `NOTE_*` ids below. The CLI
words them.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import TypedDict, Unpack

import anyio
import anyio.to_thread
import msgspec

from coi_async.egress import DEFAULT_ALLOWLIST
from coi_async.egress.connection import ConnectionRecord
from coi_async.errors import BuildError, CoiError, ConfigError
from coi_async.incus.client import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost
from coi_async.naming import KEY_TOOLS
from coi_async.orchestration import events
from coi_async.orchestration.containers import ops
from coi_async.orchestration.events import Emit, Output, StepFinished, StepStarted, note
from coi_async.orchestration.images.base import ensure_debian_base, load_base_recipe
from coi_async.orchestration.images.tail import OutputTail
from coi_async.orchestration.network.build_egress import build_egress, build_policy
from coi_async.orchestration.network.plan import EGRESS_PORT, NO_PROXY
from coi_async.recipes import COI_SCRIPT, DUMMY, files_hash
from coi_async.tools import DEFAULT_TOOL, get_tool

# `[build] base` values: this one builds the base from Debian packages with debootstrap.
DEBIAN_BASE = "debian"
# Remote image servers a base may name as `remote:alias` (used only when configured so).
REMOTES: Mapping[str, str] = {"images": "https://images.linuxcontainers.org"}

APT_PROXY_CONF = "/etc/apt/apt.conf.d/99coi-egress"
_WORK_DIR = "/tmp/coi-build"
_READY_S = 60
_CLEANUP_S = 60
_TAIL_LINES = 20
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# The phases, in order (`StepStarted.step`); the detail of each: the base named, the build
# container, the script's file name, nothing.
PHASES = ("base", "launch", "recipe", "publish")

# `Note.kind`s of a build, with their values.
NOTE_RECIPE_CHANGED = "build-recipe-changed"  # alias
NOTE_NIC = "build-nic"  # the build container has a network interface of its own
NOTE_EGRESS_PROXY = "build-egress-proxy"  # url, allowed
NOTE_EGRESS = "build-egress"  # a proxy decision: action (allowed/refused/failed), method, host, port, detail
NOTE_CLEANUP_FAILED = "build-cleanup-failed"  # container, error


class BuildRequest(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    script: Path
    base: str = DEBIAN_BASE
    force: bool = False
    # Files pushed into the build container before the script runs: container path -> local file.
    files: dict[str, Path] = {}
    allowlist: tuple[str, ...] = DEFAULT_ALLOWLIST
    proxy_port: int = 0
    container_prefix: str = "coi-"
    env: dict[str, str] = {}
    description: str = ""
    # Extra CA certificates Node.js (npm) trusts during the build, e.g. a TLS-intercepting
    # egress's; they are not baked into the image.
    ca_certs: tuple[Path, ...] = ()
    # The AI tools the recipe installs (`COI_TOOL_PACKAGES`), recorded as `user.coi.tools`.
    tools: tuple[str, ...] = ()


class BuildResult(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    fingerprint: str
    version: str = ""
    skipped: bool = False
    recipe: str = ""
    size: int = 0
    timings: dict[str, float] = {}


def host_ca_certificates(root: Path = Path("/usr/local/share/ca-certificates")) -> tuple[Path, ...]:
    """The CA certificates added locally on this host (Debian's place for them)."""
    if not root.is_dir():
        return ()
    return tuple(sorted(p for p in root.rglob("*.crt") if p.is_file()))


class BuildOptions(TypedDict, total=False):
    """How a build runs, whichever image it makes."""

    force: bool
    allowlist: tuple[str, ...]
    proxy_port: int
    container_prefix: str
    # Default: the CA certificates added on this host.
    ca_certs: tuple[Path, ...]


def coi_request(
    *, base: str = DEBIAN_BASE, tools: Sequence[str] = (DEFAULT_TOOL,), **options: Unpack[BuildOptions]
) -> BuildRequest:
    """The `coi` image: the shipped recipe on the configured base, with `tools` from npm."""
    chosen = tuple(dict.fromkeys(get_tool(name).name for name in tools))
    if not chosen:
        raise ConfigError("coi build needs at least one tool (claude, codex, gemini, opencode)")
    request = _request("coi", COI_SCRIPT, base, "coi: AI coding CLIs in a container", options)
    packages = " ".join(get_tool(name).package for name in chosen)
    return msgspec.structs.replace(request, tools=chosen, env={"COI_TOOL_PACKAGES": packages})


def custom_request(
    alias: str, script: Path, *, base: str = "coi", **options: Unpack[BuildOptions]
) -> BuildRequest:
    """A custom image: the user's script on any base (the `coi` image by default)."""
    if not script.is_file():
        raise BuildError(f"build script not found: {script}")
    return _request(alias, script.resolve(), base, f"coi custom image {alias}", options)


def _request(alias: str, script: Path, base: str, description: str, options: BuildOptions) -> BuildRequest:
    return BuildRequest(
        alias=alias,
        script=script,
        base=base,
        force=options.get("force", False),
        files={"/tmp/dummy": DUMMY},
        allowlist=options.get("allowlist", DEFAULT_ALLOWLIST),
        proxy_port=options.get("proxy_port", 0),
        container_prefix=options.get("container_prefix", "coi-"),
        ca_certs=options["ca_certs"] if "ca_certs" in options else host_ca_certificates(),
        description=description,
    )


async def recipe_hash(incus: IncusClient, request: BuildRequest) -> str:
    """What the image depends on: script, pushed files, and the base (its recipe or fingerprint)."""
    if request.base == DEBIAN_BASE:
        base_id = f"debian:{load_base_recipe().hash}"
    elif ":" in request.base:
        base_id = request.base
    else:
        image = await incus.find_image(request.base)
        base_id = image.fingerprint if image is not None else request.base
    paths = [request.script, *(request.files[k] for k in sorted(request.files))]
    extra = (request.alias, base_id, *request.tools)
    return await anyio.to_thread.run_sync(lambda: files_hash(*paths, extra=extra))


async def build_image(incus: IncusClient, request: BuildRequest, emit: Emit = events.ignore) -> BuildResult:
    """Build `request.alias`, or reuse it when it exists and its recipe is unchanged (unless forced)."""
    if not request.script.is_file():
        raise BuildError(f"build script not found: {request.script}")
    recipe = await recipe_hash(incus, request)
    existing = await incus.find_image(request.alias)
    if existing is not None and not request.force:
        recorded = existing.properties.get("user.coi.recipe", "")
        if recorded in ("", recipe):
            return BuildResult(
                alias=request.alias, fingerprint=existing.fingerprint, skipped=True, recipe=recipe
            )
        note(emit, NOTE_RECIPE_CHANGED, request.alias, alias=request.alias)
    return await _Build(incus, request, emit, recipe).run()


class _Build:
    def __init__(self, incus: IncusClient, request: BuildRequest, emit: Emit, recipe: str) -> None:
        self.incus = incus
        self.request = request
        self.emit = emit
        self.item = request.alias
        self.recipe = recipe
        self.timings: dict[str, float] = {}
        self.name = f"{request.container_prefix}build-{secrets.token_hex(4)}"

    @contextlib.contextmanager
    def _phase(self, phase: str, detail: str) -> Iterator[None]:
        self.emit(StepStarted(item=self.item, step=phase, detail=detail))
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[phase] = round(time.monotonic() - started, 2)
        self.emit(StepFinished(item=self.item, step=phase, seconds=self.timings[phase]))

    def _output(self, data: bytes) -> None:
        self.emit(Output(item=self.item, data=data))

    def _egress_event(self, record: ConnectionRecord) -> None:
        action = record.decision if record.decision in ("allowed", "refused") else "failed"
        note(
            self.emit,
            NOTE_EGRESS,
            self.item,
            level="info" if action == "allowed" else "warning",
            action=action,
            method=record.method or "?",
            host=record.host,
            port=str(record.port),
            detail=record.reason,
        )

    async def run(self) -> BuildResult:
        with self._phase("base", self.request.base):
            source = await self._resolve_base()
        try:
            with self._phase("launch", self.name):
                await self.incus.create_instance(
                    InstancesPost(
                        name=self.name,
                        source=source,
                        start=True,
                        config={"user.coi.build": self.request.alias},
                        description=f"coi build of {self.request.alias}; safe to delete",
                    )
                )
                await self._wait_ready()
            async with self._egress() as env:
                with self._phase("recipe", self.request.script.name):
                    await self._run_recipe(env)
            with self._phase("publish", ""):
                fingerprint, version = await self._publish()
        finally:
            await self._remove_container()
        image = await self.incus.get_image(fingerprint)
        return BuildResult(
            alias=self.request.alias,
            fingerprint=fingerprint,
            version=version,
            recipe=self.recipe,
            size=image.size,
            timings=self.timings,
        )

    async def _resolve_base(self) -> InstanceSource:
        base = self.request.base
        if base == DEBIAN_BASE:
            fingerprint = await ensure_debian_base(self.incus, emit=self.emit)
            return InstanceSource(type="image", fingerprint=fingerprint)
        if ":" in base:
            remote, _, alias = base.partition(":")
            server = REMOTES.get(remote)
            if server is None or not alias:
                raise BuildError(
                    f"unknown base image '{base}': no remote image server called '{remote}'",
                    hint=f"known remotes: {', '.join(REMOTES)}; or use a local image alias",
                )
            return InstanceSource(type="image", alias=alias, server=server, protocol="simplestreams")
        image = await self.incus.find_image(base)
        if image is None:
            hint = "build it with `coi build`" if base == "coi" else "see `incus image list` for local images"
            raise BuildError(
                f"unknown base image '{base}': no local image has that alias or fingerprint", hint=hint
            )
        return InstanceSource(type="image", fingerprint=image.fingerprint)

    async def _wait_ready(self) -> None:
        # exec works as soon as the container's init runs; the recipe needs nothing more.
        with anyio.move_on_after(_READY_S):
            while True:
                with contextlib.suppress(CoiError):
                    if (await self.incus.exec(self.name, ["true"])).ok:
                        return
                await anyio.sleep(0.5)
        raise BuildError(f"build container {self.name} did not become ready within {_READY_S} s")

    @asynccontextmanager
    async def _egress(self) -> AsyncIterator[dict[str, str]]:
        instance = await self.incus.get_instance(self.name)
        if any(device.get("type") == "nic" for device in instance.expanded_devices.values()):
            note(self.emit, NOTE_NIC, self.item)
            yield {}
            return
        policy = build_policy(self.request.allowlist)
        port = self.request.proxy_port or EGRESS_PORT
        async with build_egress(
            self.incus, self.name, self.request.allowlist, port=port, on_record=self._egress_event
        ) as url:
            note(self.emit, NOTE_EGRESS_PROXY, self.item, url=url, allowed=policy.describe_allowlist())
            # apt ignores http_proxy when run by some tools; its own setting always applies.
            # No pipelining: the proxy answers one request per connection.
            apt_conf = (
                f'Acquire::http::Proxy "{url}";\nAcquire::https::Proxy "{url}";\n'
                'Acquire::http::Pipeline-Depth "0";\n'
            )
            has_apt = await self._exists(APT_PROXY_CONF.rsplit("/", 1)[0])
            if has_apt:
                await self.incus.push_file(self.name, APT_PROXY_CONF, apt_conf.encode())
            yield {
                **dict.fromkeys(("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"), url),
                "no_proxy": NO_PROXY,
                "NO_PROXY": NO_PROXY,
                "npm_config_proxy": url,
                "npm_config_https_proxy": url,
            }
            if has_apt:
                await self.incus.delete_file(self.name, APT_PROXY_CONF)

    async def _exists(self, path: str) -> bool:
        # Not a HEAD on the files API: incusd answers a missing path there with an empty 404.
        return (await self.incus.exec(self.name, ["test", "-e", path])).ok

    async def _run_recipe(self, egress_env: Mapping[str, str]) -> None:
        await self.incus.make_directory(self.name, _WORK_DIR, mode=0o700)
        script = f"{_WORK_DIR}/build.sh"
        await self.incus.push_file_from(self.name, script, self.request.script, mode=0o755)
        for path, local in self.request.files.items():
            await self.incus.push_file_from(self.name, path, local, mode=0o755)
        env = {
            "PATH": _PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
            "COI_BUILD": self.request.alias,
            **egress_env,
            **self.request.env,
        }
        if self.request.ca_certs:
            bundle = b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in self.request.ca_certs)
            await self.incus.push_file(self.name, f"{_WORK_DIR}/extra-ca.pem", bundle)
            env.setdefault("NODE_EXTRA_CA_CERTS", f"{_WORK_DIR}/extra-ca.pem")
        tail = OutputTail(_TAIL_LINES)

        async def sink(data: bytes) -> None:
            self._output(data)
            tail.add(data)

        # Through sh: a script without a #! line still runs (sh's fallback on ENOEXEC); one
        # stream keeps stdout and stderr in the order they were written.
        code = await self.incus.exec_stream(
            self.name,
            ["/bin/sh", "-c", f"exec {script} 2>&1"],
            on_stdout=sink,
            on_stderr=sink,
            env=env,
            cwd="/root",
        )
        if code != 0:
            raise BuildError(
                f"build script {self.request.script.name} failed with exit code {code}; "
                f"its last lines:\n{tail.text()}",
                hint=f"the previous '{self.request.alias}' image is unchanged",
            )
        pushed = [_WORK_DIR, *self.request.files]
        await self.incus.exec(self.name, ["rm", "-rf", "--", *pushed])

    async def _publish(self) -> tuple[str, str]:
        # A synced filesystem is all publishing needs; a clean shutdown would only add seconds,
        # or 30 s of grace with an init that ignores SIGPWR.
        await self.incus.exec(self.name, ["sync"])
        await ops.force_stop(self.incus, self.name)
        version = f"{self.request.alias}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        properties = {
            "description": f"{self.request.description or self.request.alias} ({version})",
            "user.coi.image": self.request.alias,
            "user.coi.recipe": self.recipe,
            "user.coi.base": self.request.base,
        }
        if self.request.tools:
            properties[KEY_TOOLS] = ",".join(self.request.tools)
        fingerprint = await self.incus.publish_image(
            self.name, aliases=[version], properties=properties, compression="none"
        )
        try:
            await self.incus.point_image_alias(
                self.request.alias, fingerprint, description=properties["description"]
            )
        except BaseException:
            with anyio.move_on_after(_CLEANUP_S, shield=True), contextlib.suppress(CoiError):
                await self.incus.delete_image(fingerprint)
            raise
        return fingerprint, version

    async def _remove_container(self) -> None:
        started = time.monotonic()
        try:
            await ops.remove(self.incus, self.name, bound_s=_CLEANUP_S)  # shielded, bounded
        except CoiError as exc:
            note(
                self.emit,
                NOTE_CLEANUP_FAILED,
                self.item,
                level="warning",
                container=self.name,
                error=str(exc),
            )
        self.timings["cleanup"] = round(time.monotonic() - started, 2)
