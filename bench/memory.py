"""Wall time and peak resident memory of one call, for the benchmarks (Linux: ``/proc/self``, glibc).

Resident memory only measures what a call adds when freed memory goes back to the system: glibc's malloc otherwise
keeps freed blocks below its *dynamic* mmap threshold (which grows up to 32 MiB as large blocks are freed), and a
later call reuses them without raising the peak, so whichever side runs second looks smaller. Importing this module
fixes both thresholds at 128 KiB (``mallopt``), so every tensor-sized block is mapped and unmapped, and every call of
:func:`measured` first runs once unmeasured (imports, caches, first-use allocations), so both sides of a benchmark
are measured alike whatever their order.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
FIXED_THRESHOLD = 128 * 1024


def fix_malloc_thresholds() -> bool:
    """Fix glibc's trim and mmap thresholds (see the module docstring); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, FIXED_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, FIXED_THRESHOLD)
    )


THRESHOLDS_FIXED = fix_malloc_thresholds()


def resident_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def resident_peak_reset() -> None:
    """Reset the process's peak resident set size (writing 5 to ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def measured(call: Callable[[], T], repeat: int, warmup: int = 1) -> tuple[float, float, T]:
    """Median seconds over ``repeat`` calls after ``warmup`` unmeasured ones, the peak resident memory (MiB) above
    the level before each call (the largest), and the last result (each earlier result is dropped before the next
    call)."""
    for _ in range(warmup):
        call()
    times, peaks = [], []
    result = None
    for _ in range(repeat):
        result = None
        gc.collect()
        baseline = resident_mib("VmRSS")
        resident_peak_reset()
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
        peaks.append(resident_mib("VmHWM") - baseline)
    assert result is not None
    return statistics.median(times), max(peaks), result
