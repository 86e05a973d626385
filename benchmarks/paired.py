"""Paired timing for the benchmarks: the sides of a comparison interleaved sample by sample.

Each round times every side once, the order reversed every other round (A B, B A, A B, ...), so
that a drift of the machine (another engineer's build, the page cache, incusd's own caches) falls
on both sides alike. `warmup` untimed rounds come first.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence


def _order(names: Sequence[str], round_no: int) -> Sequence[str]:
    return names if round_no % 2 == 0 else list(reversed(names))


def paired(
    sides: Mapping[str, Callable[[], object]],
    runs: int,
    *,
    warmup: int = 1,
    between: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each side's `runs` samples. `between` runs untimed after every sample (e.g. to
    wait until the previous side's containers are gone)."""
    names = list(sides)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(warmup + runs):
        for name in _order(names, round_no):
            start = time.perf_counter()
            sides[name]()
            elapsed = time.perf_counter() - start
            if between is not None:
                between()
            if round_no >= warmup:
                samples[name].append(elapsed)
    return samples


async def paired_async(
    sides: Mapping[str, Callable[[], Awaitable[object]]], runs: int, *, warmup: int = 1
) -> dict[str, list[float]]:
    """`paired` for sides that are coroutines (in-process client calls)."""
    names = list(sides)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(warmup + runs):
        for name in _order(names, round_no):
            start = time.perf_counter()
            await sides[name]()
            elapsed = time.perf_counter() - start
            if round_no >= warmup:
                samples[name].append(elapsed)
    return samples


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000
