"""What an analysis will cost, estimated before it starts, and the limits that refuse or warn about it.

A landscape counts grid points and a Hessian analysis Hessian-vector products: both are known from the options alone,
so the unit limit is checked before anything is measured. Seconds come from timing the model on one small batch and
memory from the tensors autograd saves on that batch (:func:`saved_bytes`), both scaled to the run; the limits on
them are checked before the run's first real pass over its data.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from fusion.errors import CostLimitError
from fusion.records import Record

GIB = 2**30


class SlowAnalysisWarning(UserWarning):
    """An analysis is expected to take longer than its ``warn_seconds``."""


@dataclass(frozen=True)
class CostEstimate(Record):
    """The cost of one run: ``units`` of work (grid points, or Hessian-vector products, as ``unit`` says; for a
    Hessian an upper bound, since its iterations may stop early), passes of a data batch through the network
    (``forward_passes``) and back (``backward_passes``), examples pushed through (``examples``), the seconds expected
    and the peak bytes of tensors the run holds (``memory_bytes``)."""

    units: int
    unit: str
    forward_passes: int
    backward_passes: int
    examples: int
    seconds: float
    memory_bytes: int

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / GIB

    def __add__(self, other: CostEstimate) -> CostEstimate:
        """Two runs one after the other: the work adds up, the peak memory is the larger one's."""
        return CostEstimate(
            self.units + other.units,
            self.unit,
            self.forward_passes + other.forward_passes,
            self.backward_passes + other.backward_passes,
            self.examples + other.examples,
            self.seconds + other.seconds,
            max(self.memory_bytes, other.memory_bytes),
        )

    def describe(self) -> str:
        """``"up to 10,500 Hessian-vector products, about 42 s, 0.3 GiB"``."""
        return f"{self.units:,} {self.unit}, about {self.seconds:,.0f} s, {self.memory_gb:.2g} GiB"


def check_units(units: int, limit: int, unit: str, lower: str, error: type[CostLimitError] = CostLimitError) -> None:
    """Refuse ``units`` above ``limit`` with a message naming the figure and what to ``lower``."""
    if units > limit:
        raise error(f"this run needs {units:,} {unit}, above the limit of {limit:,}; lower {lower}")


def check_estimate(
    estimate: CostEstimate,
    max_seconds: float,
    max_memory_gb: float,
    warn_seconds: float,
    lower: str,
    error: type[CostLimitError] = CostLimitError,
    warning: type[SlowAnalysisWarning] = SlowAnalysisWarning,
) -> None:
    """Refuse an estimate above ``max_seconds`` or ``max_memory_gb``; warn (``warning``) above ``warn_seconds``."""
    if estimate.seconds > max_seconds:
        raise error(
            f"this run would take about {estimate.seconds:,.0f} s ({estimate.units:,} {estimate.unit}, "
            f"{estimate.forward_passes:,} forward passes), above the limit of {max_seconds:,.0f} s; lower {lower}"
        )
    if estimate.memory_gb > max_memory_gb:
        raise error(
            f"this run would hold about {estimate.memory_gb:,.1f} GiB, above the limit of {max_memory_gb:g} GiB; "
            f"lower {lower}"
        )
    if estimate.seconds > warn_seconds:
        warnings.warn(
            f"this run will take about {estimate.seconds:,.0f} s ({estimate.describe()})", warning, stacklevel=3
        )


def saved_bytes(run: Callable[[], Any], shared: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for backward while ``run()`` runs (its graph's memory), leaving out those
    whose storage is one of ``shared`` (parameters, held once however many examples go through)."""
    held = {tensor.data_ptr() for tensor in shared}
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if tensor.data_ptr() not in held:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return total
