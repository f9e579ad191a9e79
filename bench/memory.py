"""Wall time and peak resident memory of one call, for the benchmarks (Linux: ``/proc/self``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def resident_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def resident_peak_reset() -> None:
    """Reset the process's peak resident set size (writing 5 to ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def measured(call: Callable[[], T], repeat: int) -> tuple[float, float, T]:
    """Median seconds over ``repeat`` calls, the peak resident memory (MiB) above the level before each call (the
    largest), and the last result."""
    times, peaks = [], []
    for _ in range(repeat):
        baseline = resident_mib("VmRSS")
        resident_peak_reset()
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
        peaks.append(resident_mib("VmHWM") - baseline)
    return statistics.median(times), max(peaks), result
