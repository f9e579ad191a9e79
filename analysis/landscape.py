"""Loss landscapes: lines, planes and filter-normalised random directions through parameter space.

Every landscape here evaluates networks whose state is a linear combination of a few *bases* (state_dicts):
``S(p) = sum_k C[p, k] S_k`` for grid points ``p``, over every floating-point entry (parameters and BatchNorm running
statistics; integer buffers come from the first model). Then

- linear interpolation (Goodfellow et al. 2015; Frankle et al. 2020; Draxler et al. 2018) is ``C = (1 - t, t)`` over
  ``(S_A, S_B)``, and its loss barrier is ``max_t [L((1-t) θ_A + t θ_B) - ((1-t) L(θ_A) + t L(θ_B))]``;
- the plane through three models (Garipov et al. 2018) has the orthonormal basis ``u = (θ_B - θ_A) / a``,
  ``w = (θ_C - θ_A - b u) / c`` (Gram-Schmidt over the trainable parameters, ``a = ||θ_B - θ_A||``,
  ``b = <θ_C - θ_A, u>``, ``c = ||θ_C - θ_A - b u||``), so A, B, C sit at ``(0, 0)``, ``(a, 0)``, ``(b, c)``, and the
  point ``θ_A + x u + y w`` is the affine combination ``(1 - λ_B - λ_C, λ_B, λ_C)`` of the three models with
  ``λ_C = y / c`` and ``λ_B = x / a - y b / (a c)`` -- applied to the running statistics too;
- random directions (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets") are ``C = (1, α, β)`` over
  ``(S, d_1, d_2)`` with filter-normalised directions ``d``: Gaussian, then each filter ``d_i`` (a slice along the
  output dimension of a weight with two or more dimensions) rescaled to ``||d_i|| = ||θ_i||``; the directions of
  biases, BatchNorm parameters and buffers are zero (the reference's ``--xignore biasbn``).

Points can be evaluated several at a time: ``torch.func.vmap`` over ``functional_call`` runs a chunk of parameter sets
through each data batch at once. That saves kernel launches, not arithmetic, so the automatic choice chunks only on
CUDA. On the CPU (digits, 1,797 inputs per point, 121-point grid, two threads, quiet machine) a chunk of 8 points ran at
0.94-1.00x / 0.77-1.21x / 0.70-0.83x the speed of one point per call (MLP 128-64 / CNN 16-32 / ResNet-18 x0.25), and
under load from other jobs at 1.5-2x: not a gain worth a default. With
``LandscapeConfig.recompute_batchnorm`` every point's BatchNorm statistics are instead re-estimated on training data
(one point at a time, see :func:`fusion.batchnorm.recompute_batchnorm`), as for a fused network.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from analysis import AnalysisError
from analysis.cost import (
    CostEstimate,
    SlowAnalysisWarning,
    check_estimate,
    check_units,
    saved_bytes,
    seconds_range,
    time_step,
)
from analysis.grid import step_grid
from analysis.states import State, eval_mode, float_state
from fusion.batchnorm import has_batchnorm, recompute_batchnorm
from fusion.data import Dataset
from fusion.device import default_device
from fusion.distributed import all_reduce_sum, shard
from fusion.errors import ArchitectureError, ConfigError, CostLimitError, DatasetError, NonFiniteLoss
from fusion.groups import neuron_groups
from fusion.problems import Checked, Checks, given
from fusion.progress import Progress, no_progress
from fusion.records import Record, to_json
from fusion.repair import repair as renormalise_to_parents

POINTS_PER_CALL_BUDGET = 25_000_000
"""Automatic chunking on CUDA: at most ``floor(budget / parameters)`` points per vmapped call (100 MB of float32
states)."""


class GridTooLarge(CostLimitError, AnalysisError):
    """A landscape grid would take more points, time or memory than the configured limits allow."""


class SlowLandscapeWarning(SlowAnalysisWarning):
    """A landscape grid is expected to take longer than ``LandscapeConfig.warn_seconds``."""


@dataclass(frozen=True)
class LandscapeConfig(Record, Checked):
    """Grid, data and limits of a landscape (:func:`linear_interpolation`, :func:`plane`, :func:`random_directions`).

    Every field is checked on construction; a refused value raises :class:`~fusion.errors.ConfigError` naming it.
    Before any point is evaluated, the grid's cost is estimated by timing a few real steps; grids above
    ``max_points`` points, ``max_seconds`` estimated seconds or ``max_memory_gb`` estimated GiB raise
    :class:`GridTooLarge`, and above ``warn_seconds`` a :class:`SlowLandscapeWarning` is issued.

    Attributes
    ----------
    resolution : int
        Points per axis, 2 to 1001: interpolation ``t`` in ``linspace(0, 1, resolution)``; random directions
        ``α, β`` in ``linspace(-span, span, resolution)``; plane: the models' bounding box widened by ``margin``.
    span : float
        Random directions: coefficients in ``[-span, span]`` (Li et al. plot ``[-1, 1]``).
    margin : float
        Plane: the margin around the three models, as a fraction of their extent on every side.
    samples : int or None
        Examples per split, drawn with ``seed`` (``None``: the whole split).
    batch_size : int
        Examples per forward pass.
    seed : int
        Seed of the sample and of the random directions.
    recompute_batchnorm : bool
        Re-estimate BatchNorm statistics at every point (:func:`fusion.batchnorm.recompute_batchnorm`) instead of
        combining the models' statistics.
    points_per_call : int
        Grid points per vmapped call (0: automatic, chunks only on CUDA).
    max_points, max_seconds, warn_seconds, max_memory_gb
        The limits above.

    Examples
    --------
    >>> from fusion import ConfigError
    >>> from analysis import LandscapeConfig
    >>> config = LandscapeConfig(resolution=11, samples=500)
    >>> config.resolution, config.span, config.seed
    (11, 1.0, 0)
    >>> try:
    ...     LandscapeConfig(resolution=1)
    ... except ConfigError as refused:
    ...     print(refused)
    resolution must be a whole number from 2 to 1001, got 1
    """

    resolution: int = field(default=21, metadata={"help": "grid points per axis"})
    span: float = field(default=1.0, metadata={"help": "random directions: coefficients in [-span, span]"})
    margin: float = field(
        default=0.25, metadata={"help": "plane: grid margin around the models, relative to their extent"}
    )
    samples: int | None = field(default=None, metadata={"help": "examples per split (all when unset)"})
    batch_size: int = field(default=1000, metadata={"help": "examples per forward pass"})
    seed: int = field(default=0, metadata={"help": "seed of the sample and the random directions"})
    recompute_batchnorm: bool = field(
        default=False, metadata={"help": "re-estimate BatchNorm statistics at every point"}
    )
    points_per_call: int = field(default=0, metadata={"help": "grid points per vmapped call (0: automatic)"})
    max_points: int = field(default=10_000, metadata={"help": "refuse grids with more points"})
    max_seconds: float = field(default=6 * 3600.0, metadata={"help": "refuse grids estimated to take longer (s)"})
    warn_seconds: float = field(default=600.0, metadata={"help": "warn for grids estimated to take longer (s)"})
    max_memory_gb: float = field(default=16.0, metadata={"help": "refuse grids estimated to hold more memory (GiB)"})

    def check(self, checks: Checks) -> None:
        resolution = checks.whole("resolution", self.resolution, 2, 1001)
        if not (isinstance(self.span, (int, float)) and math.isfinite(self.span) and self.span > 0):
            checks.add("span", f"{{span}} must be a positive number, got {given(self.span)}")
        elif resolution:
            try:
                step_grid(-self.span, self.span, self.resolution, "{span}")
            except ConfigError as exc:  # its message names the range by the field, in braces
                checks.add("span", str(exc))
        checks.number("margin", self.margin, 0, 10)
        if self.samples is not None:
            checks.whole("samples", self.samples, 1)
        checks.whole("batch_size", self.batch_size, 1, 65_536)
        checks.whole("points_per_call", self.points_per_call, 0, 4096, note=" (0: automatic)")
        checks.whole("max_points", self.max_points, 1)
        for name in ("max_seconds", "warn_seconds", "max_memory_gb"):
            checks.number(name, getattr(self, name), 0, above=True)
        checks.seed("seed", self.seed)


@dataclass(frozen=True, eq=False)
class GridMetrics(Record):
    """Mean cross-entropy and accuracy (a fraction) on the train and test splits; every array has the grid's shape."""

    train_loss: np.ndarray
    train_accuracy: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray

    def reshape(self, *shape: int) -> GridMetrics:
        return GridMetrics(*(getattr(self, name).reshape(shape) for name in METRIC_NAMES))


METRIC_NAMES = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def parameter_names(model: nn.Module) -> list[str]:
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise AnalysisError(f"{type(model).__name__} has no trainable parameters: there is no landscape to explore")
    return names


def check_same_architecture(models: Sequence[nn.Module]) -> None:
    reference = {k: tuple(v.shape) for k, v in models[0].state_dict().items()}
    for index, model in enumerate(models[1:], start=1):
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if shapes != reference:
            different = sorted(k for k in set(reference) | set(shapes) if reference.get(k) != shapes.get(k))
            raise ArchitectureError(
                f"model {index} does not share model 0's architecture: entries {', '.join(different[:3])} differ"
            )


def split_sample(data: Dataset, split: str, samples: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.split(split)
    if len(x) == 0:
        raise DatasetError(f"{data.name}: the {split} split is empty")
    return (x, y) if samples is None else data.sample(split, samples, seed)


def auto_points_per_call(model: nn.Module, device: torch.device, requested: int = 0) -> int:
    """``requested`` when positive, else the automatic chunk size described in the module docstring."""
    if requested:
        return requested
    if device.type != "cuda":
        return 1
    count = sum(p.numel() for p in model.parameters())
    return max(1, min(32, POINTS_PER_CALL_BUDGET // max(count, 1)))


@torch.no_grad()
def evaluate_combinations(
    model: nn.Module,
    bases: Sequence[Mapping[str, torch.Tensor]],
    coefficients: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    points_per_call: int,
    device: torch.device,
    progress: Progress = no_progress,
    label: str = "landscape",
) -> tuple[np.ndarray, np.ndarray]:
    """Mean cross-entropy and accuracy on ``(x, y)`` of the networks ``S(p) = sum_k C[p, k] S_k``, eval mode.

    ``bases``: K state_dicts over the same floating-point entries; ``coefficients``: ``C``, shape ``(P, K)``.
    Computed in float32, or in float64 when a base holds float64 tensors (a model in double precision). Under
    ``torch.distributed`` each rank evaluates its shard of ``(x, y)`` and the sums are all-reduced.
    Returns two arrays of shape ``(P,)``. Chunks of ``points_per_call`` points go through each batch of
    ``batch_size`` inputs in one ``vmap``-ed :func:`torch.func.functional_call`.
    """
    points, count = coefficients.shape
    if count != len(bases):
        raise ConfigError(f"coefficients have {count} columns but {len(bases)} bases were given")
    dtype = torch.float64 if any(v.dtype == torch.float64 for v in bases[0].values()) else torch.float32
    stacked = {key: torch.stack([b[key].to(device, dtype) for b in bases]) for key in bases[0]}
    fixed = {k: v.to(device) for k, v in model.state_dict().items() if k not in stacked}
    weights = coefficients.to(device, dtype)
    total = len(x)
    local = shard(total)
    x, y = x[local], y[local]
    x, y = x.to(device, dtype if x.is_floating_point() else x.dtype), y.to(device)
    losses = torch.zeros(points, dtype=torch.float64)
    correct = torch.zeros(points, dtype=torch.float64)

    def logits(state: State, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**state, **fixed}, (inputs,))

    with eval_mode(model):
        for start in range(0, points, points_per_call):
            chunk = weights[start : start + points_per_call]
            states = {k: torch.tensordot(chunk, v, dims=1) for k, v in stacked.items()}
            for first in range(0, len(x), batch_size):
                inputs, targets = x[first : first + batch_size], y[first : first + batch_size]
                if len(chunk) == 1:
                    out = logits({k: v[0] for k, v in states.items()}, inputs)[None]
                else:
                    out = vmap(logits, in_dims=(0, None))(states, inputs)
                per_example = F.cross_entropy(out.flatten(0, 1).to(dtype), targets.repeat(len(chunk)), reduction="none")
                losses[start : start + len(chunk)] += per_example.view(len(chunk), -1).sum(1).double().cpu()
                correct[start : start + len(chunk)] += (out.argmax(-1) == targets).sum(1).double().cpu()
            done = min(start + points_per_call, points)
            progress(done, points, f"{label}: {done}/{points} points")
    all_reduce_sum(losses), all_reduce_sum(correct)
    return (losses / total).numpy(), (correct / total).numpy()


@torch.no_grad()
def evaluate_grid(
    model: nn.Module,
    bases: Sequence[Mapping[str, torch.Tensor]],
    coefficients: torch.Tensor,
    data: Dataset,
    config: LandscapeConfig,
    device: torch.device,
    progress: Progress = no_progress,
    renormalise: Callable[[nn.Module, list[float]], object] | None = None,
) -> GridMetrics:
    """Train and test metrics of every point ``sum_k C[p, k] S_k`` (see :func:`evaluate_combinations`), arrays ``(P,)``.

    With ``config.recompute_batchnorm`` (and BatchNorm in ``model``) each point's running statistics are first
    re-estimated on the training sample, and with ``renormalise`` each point's network is then passed to
    ``renormalise(network, C[p])`` to be changed in place (REPAIR), one point at a time.
    """
    train = split_sample(data, "train", config.samples, config.seed)
    test = split_sample(data, "test", config.samples, config.seed)
    points = len(coefficients)
    recompute = config.recompute_batchnorm and has_batchnorm(model)
    if not recompute and renormalise is None:
        per_call = auto_points_per_call(model, device, config.points_per_call)
        results = []
        for index, (split, (x, y)) in enumerate((("train", train), ("test", test))):

            def report(done, total, message, offset=index * points):
                return progress(offset + done, 2 * points, message)

            results.append(
                evaluate_combinations(
                    model, bases, coefficients, x, y, config.batch_size, per_call, device, report, split
                )
            )
        (train_loss, train_acc), (test_loss, test_acc) = results
        return GridMetrics(train_loss, train_acc, test_loss, test_acc)
    work = copy.deepcopy(model)
    columns: list[list[float]] = [[], [], [], []]
    for point, weights in enumerate(coefficients.to(torch.float32)):
        state = {key: sum(float(c) * b[key].float() for c, b in zip(weights, bases)) for key in bases[0]}
        work.load_state_dict(state, strict=False)
        if recompute:
            recompute_batchnorm(work, train[0], device, config.batch_size)
        if renormalise is not None:
            renormalise(work, weights.tolist())
        recomputed = [float_state(work)]
        one = torch.ones(1, 1)
        for offset, (x, y) in ((0, train), (2, test)):
            loss, accuracy = evaluate_combinations(work, recomputed, one, x, y, config.batch_size, 1, device)
            columns[offset].append(float(loss[0]))
            columns[offset + 1].append(float(accuracy[0]))
        done = "REPAIRed" if renormalise is not None else "BatchNorm recomputed"
        progress(point + 1, points, f"point {point + 1}/{points} ({done})")
    return GridMetrics(*(np.array(c) for c in columns))


TIMED_EXAMPLES = 2048
"""At most this many examples of each split go through the timed grid point; a larger sample is scaled to."""


@torch.no_grad()
def estimate_cost(
    model: nn.Module,
    data: Dataset,
    points: int,
    config: LandscapeConfig = LandscapeConfig(),
    device: torch.device | None = None,
    bases: int = 3,
    renormalise: Callable[[nn.Module, list[float]], object] | None = None,
) -> CostEstimate:
    """Count the forward passes of a grid of ``points`` points over ``bases`` state_dicts, and time grid points as the
    run evaluates them (:func:`evaluate_grid` on one chunk of points with ``config``'s samples, batch size, BatchNorm
    recomputation and ``renormalise``; samples above :data:`TIMED_EXAMPLES` scaled linearly) to estimate its seconds,
    with the time of this estimate, which the run makes first. Memory: the stacked bases, one chunk of points' states,
    and the activations of a chunk on a batch (the tensors autograd would save, an upper bound on what inference holds)
    and the data. The timed points are ``model`` itself, as the mean of ``bases`` copies of its state."""
    started = time.perf_counter()
    device = device or default_device()
    sizes = [len(split_sample(data, split, config.samples, config.seed)[0]) for split in ("train", "test")]
    recompute = config.recompute_batchnorm and has_batchnorm(model)
    passes_per_point = sum(math.ceil(n / config.batch_size) for n in sizes)
    examples_per_point = sum(sizes)
    if recompute:
        passes_per_point += math.ceil(sizes[0] / config.batch_size)
        examples_per_point += sizes[0]
    train_x = data.split("train")[0]
    probe = train_x[: min(config.batch_size, 256)].to(device)
    state = {k: v.to(device) for k, v in model.state_dict().items()}
    params = {k: state[k].detach().clone().requires_grad_() for k, _ in model.named_parameters()}
    with eval_mode(model), torch.enable_grad():
        run = lambda: functional_call(model, {**state, **params}, (probe,))  # noqa: E731
        activation = saved_bytes(run, [*params.values(), *state.values()]) / len(probe)
    one_at_a_time = recompute or renormalise is not None
    per_call = 1 if one_at_a_time else auto_points_per_call(model, device, config.points_per_call)
    timed = dataclasses.replace(config, samples=min(max(sizes), TIMED_EXAMPLES))
    timed_examples = sum(len(split_sample(data, split, timed.samples, config.seed)[0]) for split in ("train", "test"))
    chunk = torch.full((per_call, bases), 1 / bases, dtype=torch.float64)
    stacked = [float_state(model)] * bases
    step = time_step(lambda: evaluate_grid(model, stacked, chunk, data, timed, device, renormalise=renormalise))
    scale = points / per_call * sum(sizes) / timed_examples
    seconds = scale * step.median
    low, high = seconds_range(seconds, scale * step.fastest, scale * step.slowest)
    state_bytes = sum(v.numel() * 4 for v in float_state(model).values())
    data_bytes = sum(sizes) * train_x[0].numel() * 4
    memory = (bases + per_call) * state_bytes + per_call * min(config.batch_size, max(sizes)) * activation + data_bytes
    passes = points * passes_per_point
    examples = points * examples_per_point
    estimate = CostEstimate(points, "grid points", passes, 0, examples, seconds, int(memory), low, high)
    return estimate.plus_seconds(time.perf_counter() - started)  # the run checks its limits with this estimate first


LOWER = "the resolution or the samples"


def check_points(points: int, config: LandscapeConfig) -> None:
    """Refuse (:class:`GridTooLarge`) a grid of more than ``config.max_points`` points; nothing is measured."""
    check_units(points, config.max_points, "grid points", "the resolution", GridTooLarge)


def check_limits(estimate: CostEstimate, config: LandscapeConfig) -> None:
    """Refuse (:class:`GridTooLarge`) an estimate above ``max_seconds`` or ``max_memory_gb``; warn
    (:class:`SlowLandscapeWarning`) above ``warn_seconds``."""
    check_estimate(
        estimate,
        config.max_seconds,
        config.max_memory_gb,
        config.warn_seconds,
        LOWER,
        GridTooLarge,
        SlowLandscapeWarning,
    )


def check_cost(
    model: nn.Module,
    data: Dataset,
    points: int,
    config: LandscapeConfig,
    device: torch.device,
    bases: int,
    renormalise: Callable[[nn.Module, list[float]], object] | None = None,
) -> CostEstimate:
    """Every limit of ``config`` on a grid, checked before any point is evaluated: :func:`check_points`, then
    :func:`check_limits` on :func:`estimate_cost`."""
    check_points(points, config)
    estimate = estimate_cost(model, data, points, config, device, bases, renormalise)
    check_limits(estimate, config)
    return estimate


def loss_barrier(ts: np.ndarray, losses: np.ndarray) -> float:
    """The loss barrier of a curve: how far it rises above the straight line between its end points.

    .. math::

        B = \\max_t \\; L(t) - \\big((1 - t) L(0) + t L(1)\\big)

    (Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020; Entezari et al., "The
    Role of Permutation Invariance in Linear Mode Connectivity of Neural Networks", ICLR 2022). ``B <= 0`` when the
    curve never rises above the line: the end points are linearly mode-connected.

    Parameters
    ----------
    ts : numpy.ndarray
        ``(T,)`` points of the curve, increasing, the first ``0`` and the last ``1``.
    losses : numpy.ndarray
        ``(T,)`` losses ``L(t)`` at ``ts``.

    Returns
    -------
    float
        ``B``, in the loss's unit (nats for cross-entropy).

    Examples
    --------
    >>> import numpy as np
    >>> from analysis import loss_barrier
    >>> loss_barrier(np.array([0.0, 0.5, 1.0]), np.array([0.2, 1.0, 0.4]))  # 1.0 - (0.2 + 0.4) / 2
    0.7
    >>> loss_barrier(np.linspace(0, 1, 3), np.array([0.2, 0.3, 0.4]))  # on the line: no barrier
    0.0
    """
    ts, losses = np.asarray(ts, dtype=float), np.asarray(losses, dtype=float)
    return float(np.max(losses - ((1 - ts) * losses[0] + ts * losses[-1])))


@dataclass(frozen=True, eq=False)
class InterpolationResult(Record):
    """Metrics along ``(1 - t) θ_A + t θ_B`` at ``ts`` (shape ``(T,)``) and the loss barriers of both splits."""

    ts: np.ndarray
    metrics: GridMetrics
    train_barrier: float
    test_barrier: float
    recompute_batchnorm: bool
    labels: tuple[str, str] = ("parent A", "parent B")
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "interpolation", **to_json(self)}


def linear_interpolation(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Dataset,
    config: LandscapeConfig = LandscapeConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
    labels: tuple[str, str] = ("parent A", "parent B"),
    repair: bool = False,
) -> InterpolationResult:
    """Loss and accuracy along the segment between two models, and its loss barriers.

    For ``t`` in ``linspace(0, 1, resolution)`` the model ``θ(t) = (1 - t) θ_A + t θ_B`` (every floating-point
    entry, BatchNorm statistics too, or those recomputed at every point with ``config.recompute_batchnorm``) is
    evaluated on both splits, and the barrier ``max_t [L(θ(t)) - ((1 - t) L(θ_A) + t L(θ_B))]`` (:func:`loss_barrier`)
    of each split is reported. Two independently trained networks usually have a high barrier; aligning one to the
    other first (:func:`fusion.alignment.align`) lowers it (Entezari et al. 2022; Ainsworth et al. 2023).

    With ``repair`` every point is renormalised by REPAIR (:mod:`fusion.repair`; Jordan et al. 2023) to the
    ``(1 - t, t)``-interpolation of the end points' neuron statistics on the training sample, as the REPAIR paper
    draws its curves. The end points must then be neuron-aligned (B permuted to A, as an alignment leaves them); they
    keep their own statistics, so the barrier compares like with like.

    Parameters
    ----------
    model_a, model_b : nn.Module
        ``θ_A`` and ``θ_B``: two networks of one architecture (same parameter names and shapes).
    data : Dataset
        The splits to evaluate (``config.samples`` of each, or all).
    config : LandscapeConfig
        Resolution, sample, batch size, limits.
    device : torch.device, optional
        Where to evaluate (:func:`fusion.device.default_device` when ``None``).
    progress : Progress
        Called as the grid's points are evaluated.
    labels : tuple[str, str]
        The end points' names in figures.
    repair : bool
        Renormalise every point by REPAIR.

    Returns
    -------
    InterpolationResult
        ``ts: (T,)``, ``metrics`` (train/test loss and accuracy, each ``(T,)``), ``train_barrier`` and
        ``test_barrier`` in nats.

    Raises
    ------
    ArchitectureError
        When the models' parameters differ in names or shapes.
    GridTooLarge
        When the estimated cost exceeds ``config``'s limits.
    NonFiniteLoss
        When a point's loss is NaN or infinite.

    References
    ----------
    Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020. Entezari et al., "The
    Role of Permutation Invariance in Linear Mode Connectivity of Neural Networks", ICLR 2022. Jordan et al., "REPAIR:
    REnormalizing Permuted Activations for Interpolation Repair", ICLR 2023.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import TrainConfig, load_dataset, train
    >>> data = load_dataset("digits")
    >>> parents = []
    >>> for seed in (0, 1):
    ...     _ = torch.manual_seed(seed)
    ...     model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    ...     _ = train(model, data, TrainConfig(epochs=3, lr=0.01, seed=seed))
    ...     parents.append(model)
    >>> from analysis import LandscapeConfig, linear_interpolation
    >>> config = LandscapeConfig(resolution=5, samples=300)
    >>> line = linear_interpolation(*parents, data, config)
    >>> line.ts.tolist(), line.metrics.test_loss.shape, round(line.test_barrier, 1)
    ([0.0, 0.25, 0.5, 0.75, 1.0], (5,), 0.6)

    The second parent aligned to the first (its hidden neurons permuted, the same function) lies across a far lower
    barrier:

    >>> from fusion import align, neuron_groups
    >>> aligned = align(parents[1], parents[0], neuron_groups(parents[0], data.x_train[:1])).model
    >>> round(linear_interpolation(parents[0], aligned, data, config).test_barrier, 1)
    0.1
    """
    device = device or default_device()
    check_same_architecture([model_a, model_b])
    parameter_names(model_a)
    ts = np.linspace(0.0, 1.0, config.resolution)
    coefficients = torch.tensor(np.stack([1 - ts, ts], axis=1))
    renormalise = None
    if repair:
        groups = neuron_groups(copy.deepcopy(model_a).cpu(), data.x_train[:2])
        sample = split_sample(data, "train", config.samples, config.seed)[0]

        def renormalise(network: nn.Module, weights: list[float]) -> None:
            renormalise_to_parents(network, [model_a, model_b], groups, sample, weights, device, config.batch_size)

    check_cost(model_a, data, len(ts), config, device, 2, renormalise)

    bases = [float_state(model_a), float_state(model_b)]
    metrics = evaluate_grid(model_a, bases, coefficients, data, config, device, progress, renormalise)
    for split, losses in (("train", metrics.train_loss), ("test", metrics.test_loss)):
        if not np.isfinite(losses).all():
            at = ", ".join(f"{t:.2f}" for t in ts[~np.isfinite(losses)][:5])
            raise NonFiniteLoss(f"the {split} loss is NaN or infinite at t = {at}: there is no barrier to report")
    return InterpolationResult(
        ts,
        metrics,
        loss_barrier(ts, metrics.train_loss),
        loss_barrier(ts, metrics.test_loss),
        config.recompute_batchnorm,
        labels,
        repair,
    )


@dataclass(frozen=True, eq=False)
class PlaneBasis:
    """The plane through three models: origin ``θ_A``, orthonormal directions ``u``, ``w`` (trainable parameters
    only), and the models' coordinates ``(0, 0)``, ``(a, 0)``, ``(b, c)``; see the module docstring."""

    origin: State
    u: State
    w: State
    a: float
    b: float
    c: float

    @property
    def coordinates(self) -> list[tuple[float, float]]:
        return [(0.0, 0.0), (self.a, 0.0), (self.b, self.c)]

    def affine(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Weights ``(λ_A, λ_B, λ_C)``, shape ``(P, 3)``, with ``θ_A + x u + y w = λ_A θ_A + λ_B θ_B + λ_C θ_C``."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        lam_c = y / self.c
        lam_b = x / self.a - y * self.b / (self.a * self.c)
        return np.stack([1 - lam_b - lam_c, lam_b, lam_c], axis=-1)

    def point(self, x: float, y: float) -> State:
        """The parameters ``θ_A + x u + y w``."""
        return {k: self.origin[k] + x * self.u[k] + y * self.w[k] for k in self.origin}


def dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


def plane_basis(models: Sequence[nn.Module]) -> PlaneBasis:
    """Gram-Schmidt on ``θ_B - θ_A`` and ``θ_C - θ_A`` over the trainable parameters of three models.

    Raises :class:`AnalysisError` when the three models are (numerically) collinear.
    """
    if len(models) != 3:
        raise ConfigError(f"a plane needs exactly three models, got {len(models)}")
    check_same_architecture(models)
    names = parameter_names(models[0])
    a_state, b_state, c_state = ({k: m.state_dict()[k].detach().double() for k in names} for m in models)
    to_b = {k: b_state[k] - a_state[k] for k in names}
    to_c = {k: c_state[k] - a_state[k] for k in names}
    a = math.sqrt(dot(to_b, to_b))
    if a <= 1e-7 * max(1.0, math.sqrt(dot(a_state, a_state))):
        raise AnalysisError("models A and B are identical: they span no plane")
    u = {k: v / a for k, v in to_b.items()}
    b = dot(to_c, u)
    rest = {k: to_c[k] - b * u[k] for k in names}
    c = math.sqrt(dot(rest, rest))
    if c <= 1e-6 * max(a, math.sqrt(dot(to_c, to_c))):
        raise AnalysisError("the three models are collinear: they span a line, not a plane")
    w = {k: v / c for k, v in rest.items()}
    return PlaneBasis(a_state, u, w, a, b, c)


@dataclass(frozen=True, eq=False)
class PlaneResult(Record):
    """Metrics on the grid ``x`` (shape ``(R,)``) by ``y`` (``(R,)``) of a plane; metric arrays are ``(R_y, R_x)``.
    ``coordinates[i]`` is model i's ``(x, y)``, named ``labels[i]``."""

    x: np.ndarray
    y: np.ndarray
    metrics: GridMetrics
    coordinates: tuple[tuple[float, float], ...]
    labels: tuple[str, ...]
    recompute_batchnorm: bool

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "plane", **to_json(self)}


def plane(
    models: Sequence[nn.Module],
    data: Dataset,
    config: LandscapeConfig = LandscapeConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
    labels: tuple[str, str, str] = ("parent A", "parent B", "fused"),
) -> PlaneResult:
    """Loss and accuracy on a ``resolution x resolution`` grid over the plane through three models, e.g. parent A,
    parent B and their fusion.

    The plane has the orthonormal basis ``u = (θ_B - θ_A) / a``, ``w = (θ_C - θ_A - b u) / c`` (Gram-Schmidt over the
    trainable parameters, ``a = ||θ_B - θ_A||``, ``b = <θ_C - θ_A, u>``, ``c = ||θ_C - θ_A - b u||``), so the models
    sit at ``(0, 0)``, ``(a, 0)`` and ``(b, c)``; the point ``(x, y)`` is ``θ_A + x u + y w``, an affine combination
    of the three models applied to their BatchNorm statistics too (see the module docstring). The grid covers the
    models' bounding box widened by ``config.margin`` of its extent on every side.

    Parameters
    ----------
    models : sequence of three nn.Module
        ``θ_A``, ``θ_B``, ``θ_C``, of one architecture.
    data : Dataset
        The splits to evaluate (``config.samples`` of each, or all).
    config : LandscapeConfig
        Resolution, margin, sample, limits.
    device : torch.device, optional
        Where to evaluate (:func:`fusion.device.default_device` when ``None``).
    progress : Progress
        Called as the grid's points are evaluated.
    labels : tuple[str, str, str]
        The models' names in figures.

    Returns
    -------
    PlaneResult
        The axes ``x: (R,)`` and ``y: (R,)``, ``metrics`` with arrays of shape ``(R, R)`` (rows follow ``y``), and
        the models' ``coordinates``.

    References
    ----------
    Garipov et al., "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs", NeurIPS 2018.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import TrainConfig, load_dataset, train
    >>> data = load_dataset("digits")
    >>> parents = []
    >>> for seed in (0, 1):
    ...     _ = torch.manual_seed(seed)
    ...     model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    ...     _ = train(model, data, TrainConfig(epochs=3, lr=0.01, seed=seed))
    ...     parents.append(model)
    >>> from fusion import align, neuron_groups
    >>> from analysis import LandscapeConfig, plane
    >>> aligned = align(parents[1], parents[0], neuron_groups(parents[0], data.x_train[:1])).model
    >>> fused = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> with torch.no_grad():  # OT fusion by hand: the average of A and B aligned to A
    ...     for p, p_a, p_b in zip(fused.parameters(), parents[0].parameters(), aligned.parameters()):
    ...         _ = p.copy_((p_a + p_b) / 2)
    >>> result = plane([*parents, fused], data, LandscapeConfig(resolution=4, samples=300))
    >>> result.x.shape, result.y.shape, result.metrics.test_loss.shape
    ((4,), (4,), (4, 4))
    >>> [(round(x, 1), round(y, 1)) for x, y in result.coordinates]
    [(0.0, 0.0), (10.3, 0.0), (1.5, 3.2)]
    """
    device = device or default_device()
    basis = plane_basis(models)
    xs, ys = zip(*basis.coordinates)
    x = padded_range(min(xs), max(xs), config.margin, config.resolution)
    y = padded_range(min(ys), max(ys), config.margin, config.resolution)
    check_cost(models[0], data, len(x) * len(y), config, device, bases=3)
    grid_x, grid_y = np.meshgrid(x, y)
    coefficients = torch.tensor(basis.affine(grid_x.ravel(), grid_y.ravel()))
    metrics = evaluate_grid(models[0], [float_state(m) for m in models], coefficients, data, config, device, progress)
    return PlaneResult(
        x, y, metrics.reshape(len(y), len(x)), tuple(basis.coordinates), tuple(labels), config.recompute_batchnorm
    )


def padded_range(low: float, high: float, margin: float, count: int) -> np.ndarray:
    pad = margin * (high - low)
    return np.linspace(low - pad, high + pad, count)


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> State:
    """A random direction over ``model``'s floating-point state, filter-normalised (Li et al. 2018, Sec. 4).

    For every trainable weight ``θ`` with two or more dimensions (``(out, in)`` or ``(out, in, k, k)``) the direction
    is Gaussian and each filter ``d_i = d[i]`` is rescaled so that ``||d_i|| = ||θ_i||``; biases, BatchNorm parameters
    and buffers get zero directions. Drawn on the CPU from ``generator``, so a seed gives the same direction anywhere.
    """
    trainable = dict(model.named_parameters())
    direction = {}
    for key, value in float_state(model).items():
        param = trainable.get(key)
        if param is None or not param.requires_grad or value.dim() < 2:
            direction[key] = torch.zeros_like(value, device="cpu")
            continue
        weight = value.detach().cpu().float()
        noise = torch.randn(weight.shape, generator=generator)
        scale = weight.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1).clamp_min(1e-12)
        direction[key] = (noise * scale.view(-1, *([1] * (weight.dim() - 1)))).to(value.dtype)
    return direction


@dataclass(frozen=True, eq=False)
class RandomDirectionsResult(Record):
    """Metrics around one model along ``dims`` (1 or 2) filter-normalised directions: coefficients ``alphas``
    (``(R,)``); metric arrays ``(R,)`` for one direction, ``(R_β, R_α)`` for two (rows follow the second)."""

    alphas: np.ndarray
    dims: int
    metrics: GridMetrics
    seed: int
    label: str = "model"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "random", **to_json(self)}


def random_directions(
    model: nn.Module,
    data: Dataset,
    dims: int = 2,
    config: LandscapeConfig = LandscapeConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
    label: str = "model",
) -> RandomDirectionsResult:
    """Loss and accuracy around one model along one or two filter-normalised random directions.

    The points are ``θ + α d_1`` (``dims=1``) or ``θ + α d_1 + β d_2`` (``dims=2``) for ``α, β`` in
    ``linspace(-span, span, resolution)``. Each direction is Gaussian, drawn on the CPU from ``config.seed``, then
    every filter ``d_i`` (a slice along the output dimension of a weight with two or more dimensions) is rescaled to
    ``||d_i|| = ||θ_i||``; biases, BatchNorm parameters and buffers do not move (the reference's
    ``--xignore biasbn``).

    Parameters
    ----------
    model : nn.Module
        The centre ``θ``.
    data : Dataset
        The splits to evaluate (``config.samples`` of each, or all).
    dims : {1, 2}
        The number of directions.
    config : LandscapeConfig
        Resolution, span, sample, seed, limits.
    device : torch.device, optional
        Where to evaluate (:func:`fusion.device.default_device` when ``None``).
    progress : Progress
        Called as the grid's points are evaluated.
    label : str
        The model's name in figures.

    Returns
    -------
    RandomDirectionsResult
        ``alphas: (R,)`` and ``metrics`` with arrays of shape ``(R,)`` for one direction, ``(R, R)`` for two (rows
        follow ``β``).

    References
    ----------
    Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018, Sec. 4 (filter normalisation), Fig. 1
    and 5.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import TrainConfig, load_dataset, train
    >>> data = load_dataset("digits")
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> _ = train(model, data, TrainConfig(epochs=3, lr=0.01))
    >>> from analysis import LandscapeConfig, random_directions
    >>> around = random_directions(model, data, dims=1, config=LandscapeConfig(resolution=5, samples=300))
    >>> around.alphas.tolist()
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    >>> loss = around.metrics.test_loss
    >>> int(loss.argmin()), bool(loss[0] > loss[2] and loss[-1] > loss[2])  # the trained model sits in a valley
    (2, True)
    >>> random_directions(model, data, 2, LandscapeConfig(resolution=3, samples=100)).metrics.test_loss.shape
    (3, 3)
    """
    if dims not in (1, 2):
        raise ConfigError(f"dims must be 1 or 2, got {dims!r}")
    device = device or default_device()
    parameter_names(model)
    alphas = step_grid(-config.span, config.span, config.resolution, "span")
    points = len(alphas) ** dims
    check_cost(model, data, points, config, device, bases=1 + dims)
    generator = torch.Generator().manual_seed(config.seed)
    directions = [filter_normalized_direction(model, generator) for _ in range(dims)]
    if dims == 1:
        grid = alphas[:, None]
    else:
        grid_a, grid_b = np.meshgrid(alphas, alphas)
        grid = np.stack([grid_a.ravel(), grid_b.ravel()], axis=1)
    coefficients = torch.tensor(np.concatenate([np.ones((points, 1)), grid], axis=1))
    metrics = evaluate_grid(model, [float_state(model), *directions], coefficients, data, config, device, progress)
    shape = (len(alphas),) * dims
    return RandomDirectionsResult(alphas, dims, metrics.reshape(*shape), config.seed, label)
