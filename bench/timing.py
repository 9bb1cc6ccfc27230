"""Interleaved timing for the bench scripts: every method once per round, in turn, many rounds.

On a shared machine a method timed alone, one after another, meets whatever load the machine had
at that moment; interleaving spreads that load over all methods alike, and reporting the min
(the least disturbed run) next to the median shows how much noise there was.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def interleaved(
    calls: Mapping[str, Callable[[], object]], rounds: int, *, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each call in each of `rounds` rounds (after `warmup` untimed rounds)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return times


def best(values: list[float]) -> float:
    return min(values)


def median(values: list[float]) -> float:
    return statistics.median(values)


def ms(values: list[float], per: float = 1.0) -> str:
    """`min / median` in milliseconds (divided by `per`, e.g. the batch size)."""
    return f"{1000 * min(values) / per:.1f} / {1000 * statistics.median(values) / per:.1f}"
