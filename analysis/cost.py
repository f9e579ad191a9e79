"""What an analysis will cost, estimated before it starts, and the limits that refuse or warn about it.

A landscape counts grid points, a Hessian analysis Hessian-vector products and a training run optimizer steps: all are
known from the options alone, so the unit limit is checked before anything is measured. Seconds come from timing a few
real steps of the run on this machine, at the run's batch size, after one untimed warm-up step (:func:`time_step`),
multiplied by the steps the run takes; memory from the tensors autograd saves on a batch (:func:`saved_bytes`). The
limits are checked before the run's first real pass over its data.

Every estimate carries a range: the fewest and most steps the run can take, times the fastest and slowest timed step,
and at least :data:`SPREAD` either side of the estimate, the accuracy ``bench/estimates.py`` checks the estimates to.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusion.data import Dataset
from fusion.distributed import world_size
from fusion.errors import CostLimitError
from fusion.records import Record
from fusion.train import TrainConfig, train

GIB = 2**30
SPREAD = 1.5
"""An estimate's range reaches at least this factor below and above it: the accuracy the estimators are held to on the
demo models, quiet and loaded (``bench/estimates.py``)."""


class SlowAnalysisWarning(UserWarning):
    """An analysis is expected to take longer than its ``warn_seconds``."""


@dataclass(frozen=True)
class CostEstimate(Record):
    """The cost of one run: ``units`` of work (grid points, Hessian-vector products or optimizer steps, as ``unit``
    says; for a Hessian an upper bound, since its iterations may stop early), passes of a data batch through the network
    (``forward_passes``) and back (``backward_passes``), examples pushed through (``examples``), the seconds expected,
    the peak bytes of tensors the run holds (``memory_bytes``), and the range of seconds (``low_seconds`` to
    ``high_seconds``) the run should take."""

    units: int
    unit: str
    forward_passes: int
    backward_passes: int
    examples: int
    seconds: float
    memory_bytes: int
    low_seconds: float
    high_seconds: float

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
            self.low_seconds + other.low_seconds,
            self.high_seconds + other.high_seconds,
        )

    def plus_seconds(self, seconds: float) -> CostEstimate:
        """The same run with ``seconds`` more of fixed work (measured, so added to the estimate and both ends)."""
        return replace(
            self,
            seconds=self.seconds + seconds,
            low_seconds=self.low_seconds + seconds,
            high_seconds=self.high_seconds + seconds,
        )

    def describe_seconds(self) -> str:
        """``"about 20 s (14-30 s)"``: the estimate and its range."""
        return f"about {seconds_text(self.seconds)} ({seconds_text(self.low_seconds, self.high_seconds)})"

    def describe(self) -> str:
        """``"10,500 Hessian-vector products, about 42 s (28-63 s), 0.3 GiB"``."""
        return f"{self.units:,} {self.unit}, {self.describe_seconds()}, {self.memory_gb:.2g} GiB"


def seconds_text(*values: float) -> str:
    """``"42 s"``, ``"2.5 s"`` or ``"28-63 s"``: whole seconds from 10 s on, one decimal below."""
    digits = 0 if min(values) >= 10 else 1
    return "-".join(f"{value:,.{digits}f}" for value in values) + " s"


@dataclass(frozen=True)
class StepTime:
    """Seconds of one step, timed ``repeats`` times: the median (the estimate) and the fastest and slowest."""

    median: float
    fastest: float
    slowest: float
    repeats: int


def time_step(
    run: Callable[[], Any],
    repeats: int = 5,
    min_seconds: float = 0.2,
    max_repeats: int = 100,
    budget: float = 2.0,
    warm_up: bool = True,
) -> StepTime:
    """Time ``run()`` after one untimed call (which pays the first call's allocations and lazy set-up; skipped without
    ``warm_up``), ``repeats`` times and, for a step too short to time alone, until ``min_seconds`` have passed (at most
    ``max_repeats`` times); a step so slow that the timings pass ``budget`` seconds is timed fewer times (at least
    once). On CUDA each timing waits for the device. Under a process group every rank times the step exactly
    ``repeats`` times: the step may hold a collective (a sharded Hessian-vector product), and ranks that stopped on
    their own clocks after different counts would wait on each other forever."""
    synchronise = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    if world_size() > 1:
        min_seconds, budget, max_repeats = 0.0, math.inf, repeats
    if warm_up:
        run()
        synchronise()
    times: list[float] = []
    begun = time.perf_counter()
    while not times or (
        len(times) < max_repeats
        and time.perf_counter() - begun < budget
        and (len(times) < repeats or time.perf_counter() - begun < min_seconds)
    ):
        started = time.perf_counter()
        run()
        synchronise()
        times.append(time.perf_counter() - started)
    return StepTime(statistics.median(times), min(times), max(times), len(times))


def per_step(timed: StepTime, steps: int) -> StepTime:
    """The time of one of ``steps`` steps that ``timed`` timed together."""
    return StepTime(timed.median / steps, timed.fastest / steps, timed.slowest / steps, timed.repeats)


def merged(times: list[StepTime]) -> StepTime:
    """Several timings of one step as one: the median of their medians, the fastest and the slowest of all."""
    return StepTime(
        statistics.median(t.median for t in times),
        min(t.fastest for t in times),
        max(t.slowest for t in times),
        sum(t.repeats for t in times),
    )


def seconds_range(seconds: float, fewest: float, most: float) -> tuple[float, float]:
    """The range of a run's seconds: from ``fewest`` (the fewest steps at the fastest step time) to ``most`` (the most
    steps at the slowest), and at least :data:`SPREAD` below and above ``seconds``."""
    return min(fewest, seconds / SPREAD), max(most, seconds * SPREAD)


TIMED_STEPS = 16
"""Optimizer steps in the longer of the two timed training runs of :func:`training_cost`."""


def training_cost(model: nn.Module, data: Dataset, config: TrainConfig, device: torch.device) -> CostEstimate:
    """The cost of :func:`fusion.train.train` of ``model`` on ``data`` with ``config``: ``epochs * ceil(n / batch)``
    optimizer steps. ``train`` itself is timed on a copy of ``model`` for one epoch of one step and of
    :data:`TIMED_STEPS` steps (the first batches of the training split, the whole test split evaluated; after one
    warm-up, three rounds interleaved): their difference is the time of a step as the loop takes it (batching,
    forward, backward, update, schedule), the rest the run's fixed part (the optimizer's set-up and the evaluation).
    Memory: the parameters, the optimizer's state (two more copies at most, Adam's moments) and one batch's autograd
    graph."""
    x, y = data.split("train")
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    steps = config.epochs * steps_per_epoch
    timed_steps = max(2, min(TIMED_STEPS, steps_per_epoch))
    one_epoch = replace(config, epochs=1)

    def run(count: int, warm_up: bool = False) -> StepTime:
        first = count * config.batch_size
        subset = replace(data, x_train=x[:first], y_train=y[:first])
        step = lambda: train(copy.deepcopy(model), subset, one_epoch, device)  # noqa: E731
        return time_step(step, repeats=1, min_seconds=0, warm_up=warm_up)

    run(timed_steps, warm_up=True)
    rounds = [(run(1), run(timed_steps)) for _ in range(3)]  # interleaved, so a change of load meets both
    short, long = (merged([pair[index] for pair in rounds]) for index in (0, 1))

    def total(pick: Callable[[StepTime], float]) -> float:
        step = max(pick(long) - pick(short), 0.0) / (timed_steps - 1)
        return pick(short) - step + steps * step

    seconds = total(lambda timed: timed.median)
    low, high = seconds_range(seconds, total(lambda timed: timed.fastest), total(lambda timed: timed.slowest))
    parameters = list(model.parameters())
    inputs, targets = x[: config.batch_size].to(device), y[: config.batch_size].to(device)
    work = copy.deepcopy(model).to(device).train()
    graph = saved_bytes(lambda: F.cross_entropy(work(inputs), targets), shared=list(work.parameters()))
    state = sum(p.numel() * p.element_size() for p in parameters)
    test_size = len(data.split("test")[0])
    examples = config.epochs * len(x) + test_size
    passes = steps + math.ceil(test_size / 1024)
    return CostEstimate(steps, "optimizer steps", passes, steps, examples, seconds, 3 * state + graph, low, high)


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
