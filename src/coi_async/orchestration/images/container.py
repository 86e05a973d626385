"""One build container: made from a base image or a kept layer, given egress, a step run in it as
root with its output streamed, then stopped (to be kept or published) or removed.

A build container without a network interface gets egress through the egress daemon, as a
session does (orchestration/network/build_egress.py), with the build's allowlist as its policy.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from coi_async.egress.connection import ConnectionRecord
from coi_async.errors import BuildError, CoiError
from coi_async.incus.client import IncusClient
from coi_async.incus.models import InstanceSource, InstancesPost
from coi_async.orchestration.containers import boot, ops
from coi_async.orchestration.events import Emit, Output, note
from coi_async.orchestration.images.request import BuildRequest, BuildStep
from coi_async.orchestration.images.tail import OutputTail
from coi_async.orchestration.network.build_egress import build_egress, build_policy
from coi_async.orchestration.network.plan import EGRESS_PORT, NO_PROXY

APT_PROXY_CONF = "/etc/apt/apt.conf.d/99coi-egress"
# Set on every build container: the alias it builds (`coi clean` and people know it by that).
KEY_BUILD = "user.coi.build"
_WORK_DIR = "/tmp/coi-build"
_READY_S = 60
_CLEANUP_S = 60
_TAIL_LINES = 20
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# `Note.kind`s of a build container, with their values.
NOTE_NIC = "build-nic"  # the build container has a network interface of its own
NOTE_EGRESS_PROXY = "build-egress-proxy"  # url, allowed
NOTE_EGRESS = "build-egress"  # a proxy decision: action (allowed/refused/failed), method, host, port, detail
NOTE_CLEANUP_FAILED = "build-cleanup-failed"  # container, error


class BuildContainer:
    def __init__(self, incus: IncusClient, request: BuildRequest, emit: Emit) -> None:
        self.incus = incus
        self.request = request
        self.emit = emit
        self.item = request.alias
        self.name = f"{request.container_prefix}build-{secrets.token_hex(4)}"

    async def create(self, source: InstanceSource) -> None:
        """Create and start it from `source`; return once it has booted far enough for a step."""
        await self.incus.create_instance(
            InstancesPost(
                name=self.name,
                source=source,
                start=True,
                config={KEY_BUILD: self.request.alias},
                description=f"coi build of {self.request.alias}; safe to delete",
            )
        )
        # Not before boot has emptied /tmp, where a step's files may be pushed.
        if not await boot.booted(self.incus, self.name, within_s=_READY_S):
            raise BuildError(f"build container {self.name} did not become ready within {_READY_S} s")

    @asynccontextmanager
    async def egress(self) -> AsyncIterator[dict[str, str]]:
        """The environment that sends the step's HTTP(S) through the build's egress."""
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

    async def _exists(self, path: str) -> bool:
        # Not a HEAD on the files API: incusd answers a missing path there with an empty 404.
        return (await self.incus.exec(self.name, ["test", "-e", path])).ok

    async def run(self, step: BuildStep, egress_env: Mapping[str, str]) -> None:
        """Run the step's script as root; BuildError with its last lines when it fails."""
        await self.incus.make_directory(self.name, _WORK_DIR, mode=0o700)
        script = f"{_WORK_DIR}/build.sh"
        await self.incus.push_file_from(self.name, script, step.script, mode=0o755)
        for path, local in step.files.items():
            await self.incus.push_file_from(self.name, path, local, mode=0o755)
        env = {
            "PATH": _PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
            "COI_BUILD": self.request.alias,
            **egress_env,
            **step.env,
        }
        if self.request.ca_certs:
            bundle = b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in self.request.ca_certs)
            await self.incus.push_file(self.name, f"{_WORK_DIR}/extra-ca.pem", bundle)
            env.setdefault("NODE_EXTRA_CA_CERTS", f"{_WORK_DIR}/extra-ca.pem")
        tail = OutputTail(_TAIL_LINES)

        async def sink(data: bytes) -> None:
            self.emit(Output(item=self.item, data=data))
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
                f"build script {step.script.name} failed with exit code {code}; "
                f"its last lines:\n{tail.text()}",
                hint=f"the previous '{self.request.alias}' image is unchanged",
            )
        pushed = [_WORK_DIR, *step.files]
        await self.incus.exec(self.name, ["rm", "-rf", "--", *pushed])

    async def stop(self) -> None:
        # A synced filesystem is all keeping or publishing needs; a clean shutdown would only
        # add seconds, or 30 s of grace with an init that ignores SIGPWR.
        await self.incus.exec(self.name, ["sync"])
        await ops.force_stop(self.incus, self.name)

    async def remove(self) -> float:
        """Delete it (shielded, bounded); the seconds that took. A failure is a warning note."""
        started = time.monotonic()
        try:
            await ops.remove(self.incus, self.name, bound_s=_CLEANUP_S)
        except CoiError as exc:
            note(
                self.emit,
                NOTE_CLEANUP_FAILED,
                self.item,
                level="warning",
                container=self.name,
                error=str(exc),
            )
        return time.monotonic() - started
