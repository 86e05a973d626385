"""`coi limit`: CPU and memory limits of running sessions, applied live by incusd."""

from __future__ import annotations

import re
from collections.abc import Sequence

from coi_async.errors import UsageError
from coi_async.incus import IncusClient
from coi_async.incus.models import InstancePatch
from coi_async.orchestration.events import Emit, ignore
from coi_async.orchestration.runner import BulkReport, ItemContext, run_bulk

_CPU = re.compile(r"[1-9][0-9]{0,3}")
_MEMORY = re.compile(r"([1-9][0-9]{0,12})(B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)|([1-9][0-9]?|100)%")
UNLIMITED = "none"
_LIMIT_S = 30.0


def cpu_limit(text: str) -> str:
    """`limits.cpu` for `--cpu`: a number of CPUs, or `none`; UsageError otherwise."""
    if text == UNLIMITED:
        return ""
    if not _CPU.fullmatch(text):
        raise UsageError(f"invalid --cpu '{text}': a number of CPUs (1, 2, ...) or 'none'")
    return text


def memory_limit(text: str) -> str:
    """`limits.memory` for `--memory`: a size (512MiB, 2GB) or a percentage, or `none`."""
    if text == UNLIMITED:
        return ""
    if not _MEMORY.fullmatch(text):
        raise UsageError(
            f"invalid --memory '{text}': a size such as 512MiB or 2GB, a percentage such as 50%, or 'none'"
        )
    return text


async def apply_limits(
    incus: IncusClient,
    names: Sequence[str],
    *,
    cpu: str | None,
    memory: str | None,
    parallel: int,
    emit: Emit = ignore,
) -> BulkReport:
    """Set the limits given (None: leave that one as it is; "": remove it) on every container."""
    config: dict[str, str] = {}
    if cpu is not None:
        config["limits.cpu"] = cpu  # incusd drops a key set to ""
    if memory is not None:
        config["limits.memory"] = memory

    async def one(ctx: ItemContext) -> None:
        with ctx.committed(_LIMIT_S):
            await incus.update_instance(ctx.name, InstancePatch(config=config))

    return await run_bulk(list(names), one, limit=parallel, per_item_s=_LIMIT_S, emit=emit)
