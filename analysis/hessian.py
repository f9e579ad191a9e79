"""The Hessian study of one model (Yao et al. 2020, PyHessian; the otfusion generalization study): its cost estimated
and its limits checked before any work, then top eigenvalues, trace, density, per-layer blocks and perturbation curves
in one :class:`HessianReport`.

The parts, in the order they build on each other: :mod:`analysis.hessian_config` (the settings),
:mod:`analysis.curvature` (linear operators, the Hessian's among them, and the estimators that take any of them:
Lanczos, Hutchinson, SLQ), :mod:`analysis.hessian_spectrum` (:class:`Hessian`, where the settings become the
estimators' numbers), :mod:`analysis.perturbation`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from analysis import AnalysisError
from analysis.cost import (
    CostEstimate,
    SlowAnalysisWarning,
    StepTime,
    check_estimate,
    check_units,
    per_step,
    saved_bytes,
    seconds_range,
    time_step,
)
from analysis.curvature.hessian import Loss, cross_entropy_loss
from analysis.curvature.hutchinson import MIN_TRACE_PROBES, TraceEstimate
from analysis.curvature.lanczos import lanczos, lanczos_start
from analysis.curvature.slq import EigenvalueDensity
from analysis.hessian_config import HessianConfig
from analysis.hessian_spectrum import Hessian, LayerHessian, TopEigenvalues, layer_parameters, sample_data
from analysis.perturbation import (
    EigenPlane,
    PerturbationCurve,
    eigen_plane,
    perturbation_curve,
    perturbation_study,
    study_directions,
)
from analysis.states import eval_mode
from fusion.attention_layouts import differentiable_twin
from fusion.device import default_device
from fusion.progress import Progress, no_progress
from fusion.records import Record, RecordError, from_json
from fusion.train import Metrics, evaluate


class SlowHessianWarning(SlowAnalysisWarning):
    """A Hessian analysis is expected to take longer than ``HessianConfig.warn_seconds``."""


HESSIAN_PRODUCTS = "Hessian-vector products"


LOWER_FOR = {
    "top eigenvalues": "iterations (or deflation)",
    "trace": "probes",
    "density": "steps or runs",
    "layers": "iterations and probes, or turn layers off",
    "perturbation": "random_directions or top_k",
    "spread": "top_k",
}
"""The options that bound each stage's Hessian-vector products."""


def hessian_products(model: nn.Module, config: HessianConfig = HessianConfig()) -> dict[str, int]:
    """The most Hessian-vector products :func:`hessian_report` can use, by stage (each may stop earlier): top-k
    Lanczos ``min(max(iterations, deflation), n)``, the trace's ``probes``, the density's ``runs * min(steps, n)``,
    one per perturbation direction (``d^T H d``), ``k`` per sample part for the eigenvalues' spread (each on that
    part only), and with ``layers`` the top eigenvalue and trace of every layer's block of ``n_l`` parameters.
    Counted from the parameter shapes alone."""
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    if not sizes:
        raise AnalysisError(f"{type(model).__name__} has no trainable parameters: its Hessian is empty")
    size = sum(sizes)
    if config.top_k > size:
        raise AnalysisError(f"k must be at most the number of parameters analysed ({size}), got k={config.top_k}")
    lanczos_steps = max(config.iterations, config.deflation)
    products = {
        "top eigenvalues": min(lanczos_steps, size),
        "trace": config.probes,
        "density": config.runs * min(config.steps, size),
        "perturbation": config.top_k + config.random_directions,
        "spread": config.top_k * config.batch_parts if config.batch_parts > 1 else 0,
    }
    if config.layers:
        shapes = dict(model.named_parameters())
        blocks = [sum(shapes[name].numel() for name in names) for names in layer_parameters(model).values()]
        products["layers"] = sum(min(lanczos_steps, block) + config.probes for block in blocks)
    return products


def check_products(models: Sequence[nn.Module], config: HessianConfig) -> int:
    """Refuse (:class:`CostLimitError`) Hessian analyses of ``models`` needing more than ``config.max_products``
    Hessian-vector products in all; returns the count. Nothing is computed."""
    stages: dict[str, int] = {}
    for model in models:
        for stage, count in hessian_products(model, config).items():
            stages[stage] = stages.get(stage, 0) + count
    total = sum(stages.values())
    largest = max(stages, key=stages.__getitem__)
    parts = ", ".join(f"{stage} {count:,}" for stage, count in stages.items())
    lower = f"{LOWER_FOR[largest]} ({parts} for {len(models)} model(s)), or raise max_products"
    check_units(total, config.max_products, HESSIAN_PRODUCTS, lower)
    return total


TIMED_PRODUCTS = 4
"""Lanczos steps timed by :func:`estimate_hessian_cost` for the time of one Hessian-vector product."""
TIMED_POINTS = 3
"""Perturbation-curve points timed by :func:`estimate_hessian_cost` for the time of one."""


def fewest_hessian_products(model: nn.Module, config: HessianConfig = HessianConfig()) -> dict[str, int]:
    """The fewest Hessian-vector products :func:`hessian_report` can use, by stage: :func:`hessian_products` with the
    top-k Lanczos run stopped at its first chance (``deflation`` steps, more than ``k``, kept for the trace) and the
    trace at :data:`MIN_TRACE_PROBES`; the other stages do not stop early."""
    size = sum(p.numel() for p in model.parameters() if p.requires_grad)
    products = hessian_products(model, config)
    lanczos_steps = min(max(config.iterations, config.deflation), size)
    products["top eigenvalues"] = min(max(config.deflation, config.top_k + 1), lanczos_steps)
    products["trace"] = min(MIN_TRACE_PROBES, config.probes)
    return products


def estimate_hessian_cost(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
    loss: Loss = cross_entropy_loss,
    evaluated: int | None = None,
    lines: int = 0,
) -> CostEstimate:
    """The cost of :func:`hessian_report`: :func:`hessian_products` (an upper bound) and one more for each of ``lines``
    lines to other models, the passes of data batches they take, the perturbation curves' forward passes over
    ``evaluated`` examples a point (the sampled evaluation splits; default: the sample, twice), and seconds and memory
    measured on one batch of the run's size (``batch_size`` examples of the sample at most): a forward pass, a gradient
    with its graph, :data:`TIMED_PRODUCTS` Lanczos steps (each a Hessian-vector product with the reorthogonalisation
    around it) and :data:`TIMED_POINTS` points of a perturbation curve, each timed after a warm-up
    (:func:`analysis.cost.time_step`) and scaled to the sample, plus the time of this estimate, which the run makes
    first. The top eigenvalues and the trace stop between :func:`fewest_hessian_products` and :func:`hessian_products`:
    the estimate takes the middle, its range both ends. Memory: the state, the data, the gradient graphs kept (the
    tensors autograd saves; every batch's with ``cache_graph``), the Lanczos basis (the larger of the top-k and,
    reorthogonalised, the density run) and the top-k eigenvectors."""
    started = time.perf_counter()
    device = device or default_device()
    products = hessian_products(model, config)
    most, fewest = (sum(counts.values()) + lines for counts in (products, fewest_hessian_products(model, config)))
    inputs, targets = sample_data(data, config)
    samples = len(inputs)
    evaluated = 2 * samples if evaluated is None else evaluated
    batches = math.ceil(samples / config.batch_size)
    size = sum(p.numel() for p in model.parameters() if p.requires_grad)
    operators = 1 + (len(layer_parameters(model)) if config.layers else 0)
    lanczos_steps = min(max(config.iterations, config.deflation), size)
    vector_passes = lanczos_steps + math.ceil(config.probes / config.block_size)
    vector_passes += min(config.steps, size) * math.ceil(config.runs / config.block_size)
    if config.layers:
        vector_passes += products["layers"]
    graphs = operators if config.cache_graph else vector_passes
    graphs += config.batch_parts if config.batch_parts > 1 else 0
    curve_points = (config.top_k + config.random_directions + lines) * config.perturb_points + config.plane_points**2
    forwards = operators + 2 * curve_points

    batch = min(config.batch_size, samples)
    probe = (inputs[:batch].to(device), targets[:batch].to(device))
    params = {n: p.detach().to(device).requires_grad_() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {k: v.detach().to(device) for k, v in model.state_dict().items() if k not in params}
    leaves = list(params.values())
    gradients: list[torch.Tensor] = []
    twin, rename = differentiable_twin(model)

    def forward() -> torch.Tensor:
        return loss(functional_call(twin, rename({**params, **fixed}), (probe[0],)), probe)

    def graph() -> None:
        gradients[:] = torch.autograd.grad(forward(), leaves, create_graph=True, materialize_grads=True)

    with eval_mode(twin), torch.enable_grad():
        graph_bytes = saved_bytes(graph, shared=[*leaves, *fixed.values()]) / batch
        timed_graph = time_step(graph)
    batch_config = replace(config, samples=None, batch_size=batch, batch_parts=1)
    operator = Hessian(model, (probe[0].cpu(), probe[1].cpu()), loss, device, batch_config).operator
    start = lanczos_start(operator.size, config.seed)
    product = per_step(time_step(lambda: lanczos(operator, start, TIMED_PRODUCTS, True)), TIMED_PRODUCTS)
    no_direction = {name: torch.zeros_like(value) for name, value in model.state_dict().items()}
    points = [0.0] * TIMED_POINTS
    curve = time_step(lambda: perturbation_curve(model, no_direction, probe, points, device, batch_size=batch))
    steps = [time_step(forward), timed_graph, product, per_step(curve, TIMED_POINTS)]
    per_batch = samples / batch

    def total(pick: Callable[[StepTime], float], products_done: float) -> float:
        forward_time, graph_time, product_time, point_time = (pick(step) for step in steps)
        curves = point_time * curve_points * evaluated / batch
        return per_batch * (forward_time * operators + graph_time * graphs + product_time * products_done) + curves

    seconds = total(lambda step: step.median, (fewest + most) / 2)
    low, high = seconds_range(seconds, total(lambda step: step.fastest, fewest), total(lambda step: step.slowest, most))
    kept = samples if config.cache_graph else min(config.batch_size, samples)
    state_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    basis = max(lanczos_steps, config.runs * min(config.steps, size) if config.reorthogonalize else config.runs)
    vectors = (basis + config.top_k + 4 * config.block_size) * size * 4
    memory = state_bytes + samples * inputs[0].numel() * inputs.element_size() + kept * graph_bytes + vectors
    estimate = CostEstimate(
        most,
        HESSIAN_PRODUCTS,
        (forwards + graphs) * batches,
        (graphs + vector_passes) * batches,
        (forwards + graphs) * samples,
        seconds,
        int(memory),
        low,
        high,
    )
    return estimate.plus_seconds(time.perf_counter() - started)  # the run checks its limits with this estimate first


def check_hessian_limits(estimate: CostEstimate, config: HessianConfig) -> None:
    """Refuse (:class:`CostLimitError`) an estimate above ``config.max_seconds`` or ``config.max_memory_gb``; warn
    (:class:`SlowHessianWarning`) above ``config.warn_seconds``."""
    lower = "samples, iterations, probes, steps or runs"
    check_estimate(
        estimate, config.max_seconds, config.max_memory_gb, config.warn_seconds, lower, warning=SlowHessianWarning
    )


def check_hessian_cost(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
    loss: Loss = cross_entropy_loss,
) -> CostEstimate:
    """Every limit of ``config`` on :func:`hessian_report`, before any work: :func:`check_products` from the
    parameter shapes, then :func:`check_hessian_limits` on :func:`estimate_hessian_cost`."""
    check_products([model], config)
    estimate = estimate_hessian_cost(model, data, config, device, loss)
    check_hessian_limits(estimate, config)
    return estimate


@dataclass(frozen=True, eq=False)
class HessianReport(Record):
    """Everything :func:`hessian_report` computes, with the config and sample count used; JSON via :meth:`to_dict`."""

    top: TopEigenvalues
    trace: TraceEstimate
    density: EigenvalueDensity
    curves: tuple[PerturbationCurve, ...]
    config: HessianConfig
    samples: int
    seconds: float
    layers: tuple[LayerHessian, ...] = ()
    spread: np.ndarray | None = None
    split: str | None = None
    metrics: dict[str, Metrics] | None = None
    plane: EigenPlane | None = None

    def curve(self, label: str, split: str | None = None) -> PerturbationCurve:
        """The perturbation curve along ``label`` on ``split`` (default: the split the Hessian was taken on)."""
        split = self.split if split is None else split
        for curve in self.curves:
            if curve.label == label and curve.split in (split, None):
                return curve
        raise AnalysisError(f"no perturbation curve along {label!r} on {split!r}")

    @classmethod
    def from_dict(cls, data: Any) -> HessianReport:
        """Also reads reports stored before the trace kept its tolerance (the config's is the one it ran with) and
        before the perturbation study's settings existed (:data:`LEGACY_PERTURBATION`: what those runs did)."""
        try:
            trace = {"tolerance": data["config"].get("trace_tolerance", 0.0), **data["trace"]}
            config = {**LEGACY_PERTURBATION, **data["config"]}
        except (KeyError, TypeError, AttributeError) as exc:
            raise RecordError(f"HessianReport: a trace and a config object are needed ({exc!r})") from exc
        return from_json(cls, {**data, "trace": trace, "config": config})


LEGACY_PERTURBATION: dict[str, Any] = {
    "perturb_low": -0.5,
    "perturb_high": 0.5,
    "perturb_points": 21,
    "step_scale": "absolute",
    "random_directions": 1,
    "batch_parts": 1,
    "plane_points": 0,
    "lines_to_parents": False,
}
"""The perturbation settings of reports stored before they were options: the top eigenvector (a unit vector) and one
random filter-normalised direction on ``linspace(-0.5, 0.5, 21)``, no spread, plane or lines."""


def eigenvalue_spread(
    model: nn.Module,
    sample: tuple[torch.Tensor, torch.Tensor],
    top: TopEigenvalues,
    config: HessianConfig,
    device: torch.device | None,
    loss: Loss,
    progress: Progress = no_progress,
) -> np.ndarray:
    """The spread of each top eigenvalue over the data: the sample cut into ``config.batch_parts`` equal parts, the
    Rayleigh quotients ``v_i^T H_p v_i`` of every part's Hessian ``H_p`` (their mean is ``v_i^T H v_i = λ_i``), and
    their standard error ``std_p / sqrt(P)``; ``(k,)``, empty with one part."""
    parts = min(config.batch_parts, len(sample[0]))
    if parts < 2 or top.eigenvectors is None:
        return np.zeros(0)
    vectors = top.eigenvectors
    quotients = []
    for index, rows in enumerate(torch.arange(len(sample[0])).tensor_split(parts)):
        part = replace(config, samples=None, batch_parts=1)
        operator = Hessian(model, (sample[0][rows], sample[1][rows]), loss, device, part).operator
        products = operator.matmul(vectors.T).T
        quotients.append((products * vectors.to(products.device)).sum(1).double().cpu().numpy())
        progress(index + 1, parts, f"part {index + 1} of {parts}")
    return np.std(np.stack(quotients), axis=0, ddof=1) / math.sqrt(parts)


def hessian_report(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
    loss: Loss = cross_entropy_loss,
    evaluation: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    split: str = "",
    others: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> HessianReport:
    """The generalization study's Hessian analysis in one call: top-k eigenvalues with their spread over data parts,
    trace, eigenvalue density, and the perturbation curves (:mod:`analysis.perturbation`) along every top-k
    eigenvector and ``config.random_directions`` random directions on every split of ``evaluation`` (each sampled as
    the Hessian's data is; default: the Hessian's sample, named ``split``), and with ``config.layers`` each layer's
    top eigenvalue and trace. ``others`` (named state_dicts) add the line to each of those models."""
    check_hessian_cost(model, data, config, device, loss)
    started = time.perf_counter()
    hessian = Hessian(model, data, loss, device, config)
    sample = hessian.data
    stages = 6 if config.layers else 5

    def stage(index: int, name: str) -> Progress:
        return lambda done, total, message: progress(
            index * 1000 + 1000 * done // total, stages * 1000, f"{name}: {message}"
        )

    top = hessian.top_eigenvalues(config.top_k, stage(0, "top eigenvalues"))
    trace = hessian.trace(stage(1, "trace"))
    density = hessian.density(stage(2, "density"))
    spread = eigenvalue_spread(model, sample, top, config, device, loss, stage(3, "spread over data"))
    splits = {k: sample_data(v, config) for k, v in (evaluation or {split: sample}).items()}
    directions = study_directions(model, top, config, others)
    curves = perturbation_study(model, hessian.operator, directions, config, splits, device, stage(4, "perturbation"))
    plane = None
    if config.plane_points:
        plane = eigen_plane(model, directions, config, splits, device, stage(4, "eigenvector plane"))
    metrics = {
        name: evaluate(model, *data, batch_size=config.batch_size, device=device) for name, data in splits.items()
    }
    layers = hessian.layers(stage(5, "layers")) if config.layers else []
    return HessianReport(
        top,
        trace,
        density,
        curves,
        config,
        len(sample[0]),
        time.perf_counter() - started,
        tuple(layers),
        spread,
        split,
        metrics,
        plane,
    )
