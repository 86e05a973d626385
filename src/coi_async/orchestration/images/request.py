"""What an image build is asked to make: the `coi` image (a core step, then one step per AI tool)
or a custom image (one script), on a base, with the build's egress allowlist."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict, Unpack

import msgspec

from coi_async.egress import DEFAULT_ALLOWLIST
from coi_async.errors import BuildError, ConfigError
from coi_async.recipes import COI_SCRIPT, DUMMY, TOOL_SCRIPT
from coi_async.tools import DEFAULT_TOOL, TOOLS, get_tool

# `[build] base` values: this one builds the base from Debian packages with debootstrap.
DEBIAN_BASE = "debian"
# Remote image servers a base may name as `remote:alias` (used only when configured so).
REMOTES: Mapping[str, str] = {"images": "https://images.linuxcontainers.org"}
# Debian 12's Node.js, and the long-term-support line a tool step installs from the npm registry
# (node-linux-<arch>: the official binaries as a package) when its tool needs a newer one.
DEBIAN_NODE_MAJOR = 18
NODE_FROM_NPM = 22


class BuildStep(msgspec.Struct, frozen=True, kw_only=True):
    """One script run as root on the image so far."""

    name: str  # shown in progress: "core", "claude", or the custom script's file name
    script: Path
    # Files pushed into the build container before the script runs: container path -> local file.
    files: dict[str, Path] = {}
    env: dict[str, str] = {}


class BuildRequest(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    # Run in order. With more than one, each step's result is kept as a layer that later builds
    # reuse while it and everything before it are unchanged (orchestration/images/layers.py).
    steps: tuple[BuildStep, ...]
    base: str = DEBIAN_BASE
    force: bool = False
    allowlist: tuple[str, ...] = DEFAULT_ALLOWLIST
    proxy_port: int = 0
    container_prefix: str = "coi-"
    description: str = ""
    # Extra CA certificates Node.js (npm) trusts during the build, e.g. a TLS-intercepting
    # egress's; they are not baked into the image.
    ca_certs: tuple[Path, ...] = ()
    # The AI tools the steps install, recorded as the image property `user.coi.tools`.
    tools: tuple[str, ...] = ()

    @property
    def layered(self) -> bool:
        return len(self.steps) > 1


class BuildResult(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    fingerprint: str
    version: str = ""
    skipped: bool = False
    recipe: str = ""
    size: int = 0
    timings: dict[str, float] = {}
    # The steps whose kept layer was used instead of running them again.
    reused: tuple[str, ...] = ()


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
    """The `coi` image: the shipped core recipe on the configured base, then each of `tools`
    from npm, in the registry's order (so that the same set always reuses the same layers)."""
    wanted = {get_tool(name).name for name in tools}  # an unknown name is a ConfigError here
    if not wanted:
        raise ConfigError("coi build needs at least one tool (claude, codex, gemini, opencode)")
    chosen = tuple(name for name in TOOLS if name in wanted)
    core = BuildStep(name="core", script=COI_SCRIPT, files={"/tmp/dummy": DUMMY})
    steps = (core, *(_tool_step(name) for name in chosen))
    request = _request("coi", steps, base, options)
    return msgspec.structs.replace(request, description="coi: AI coding CLIs in a container", tools=chosen)


def _tool_step(name: str) -> BuildStep:
    tool = get_tool(name)
    env = {"COI_TOOL_PACKAGE": tool.package, "COI_TOOL_BINARY": tool.binary}
    if tool.node_major > DEBIAN_NODE_MAJOR:
        env["COI_NODE_MAJOR"] = str(max(tool.node_major, NODE_FROM_NPM))
    return BuildStep(name=name, script=TOOL_SCRIPT, env=env)


def custom_request(
    alias: str, script: Path, *, base: str = "coi", **options: Unpack[BuildOptions]
) -> BuildRequest:
    """A custom image: the user's script on any base (the `coi` image by default)."""
    if not script.is_file():
        raise BuildError(f"build script not found: {script}")
    step = BuildStep(name=script.name, script=script.resolve(), files={"/tmp/dummy": DUMMY})
    request = _request(alias, (step,), base, options)
    return msgspec.structs.replace(request, description=f"coi custom image {alias}")


def _request(alias: str, steps: tuple[BuildStep, ...], base: str, options: BuildOptions) -> BuildRequest:
    return BuildRequest(
        alias=alias,
        steps=steps,
        base=base,
        force=options.get("force", False),
        allowlist=options.get("allowlist", DEFAULT_ALLOWLIST),
        proxy_port=options.get("proxy_port", 0),
        container_prefix=options.get("container_prefix", "coi-"),
        ca_certs=options["ca_certs"] if "ca_certs" in options else host_ca_certificates(),
    )
