"""The loss along a direction, ``L(θ + t d)``, for the Hessian perturbation study: along every top-k eigenvector,
random filter-normalised directions and the line to another model, evaluated as a landscape
(:mod:`analysis.landscape`), with the curvature each curve shows.

Step scales (``step_scale``): ``absolute`` makes ``d`` a unit vector over the trainable parameters, so ``t`` is the
parameter distance ``||Δθ||``; ``relative`` makes ``||d|| = ||θ||``, so ``t = ||Δθ|| / ||θ||``; ``filter``
rescales every filter ``d_i`` (a row of a weight, along its output dimension) to the norm of the model's filter
``θ_i`` (Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018), and every one-dimensional
parameter (a bias, a normalisation scale) as one filter; random directions keep Li et al.'s zero on those.

Curvature: a parabola fitted by least squares to ``L(θ + t d)`` gives ``2 c``, the curve's curvature in the units
of ``t``; beside it ``d^T H d`` from one Hessian-vector product, the curvature at ``t = 0`` that the fit approaches
on a small symmetric range. For a unit eigenvector (``absolute``) ``d^T H d = λ_i``; ``relative`` multiplies it by
``||θ||^2``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from analysis import AnalysisError
from analysis.grid import step_grid
from analysis.hessian_config import HessianConfig, StepScale
from analysis.hessian_estimators import TopEigenvalues
from analysis.hessian_operator import HessianOperator
from analysis.landscape import auto_points_per_call, evaluate_combinations, filter_normalized_direction
from analysis.states import float_state
from fusion.device import default_device
from fusion.errors import DatasetError
from fusion.progress import Progress, no_progress
from fusion.records import Record

STEP_UNITS: dict[str, str] = {
    "absolute": "t = ‖Δθ‖ (parameter distance)",
    "relative": "t = ‖Δθ‖ / ‖θ‖ (fraction of the model's norm)",
    "filter": "t (filter-normalised: each filter moves t × its own norm)",
}
"""The axis label of each step scale."""

PERTURBATION_TS = tuple(float(t) for t in np.linspace(-0.5, 0.5, 21))
"""The otfusion generalization study's ``t`` grid for the loss along ``θ + t v``."""


@dataclass(frozen=True, eq=False)
class PerturbationCurve(Record):
    """Loss and accuracy at ``θ + t d`` for ``ts`` (``(T,)``) along the direction named ``label`` on data ``split``:
    its ``kind`` (``eigenvector``, ``random`` or ``line``) and ``index`` (eigenvector ``index + 1``, random draw
    ``index``), the ``scale`` of ``t``, the fitted curvature ``2 c`` and ``d^T H d`` (``expected``; ``None`` where
    the Hessian was not multiplied). Curves stored before these were recorded read them as ``None``."""

    ts: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    label: str
    split: str | None = None
    kind: str | None = None
    index: int | None = None
    scale: str | None = None
    curvature: float | None = None
    expected: float | None = None


def perturbation_curve(
    model: nn.Module,
    direction: Mapping[str, torch.Tensor],
    data: tuple[torch.Tensor, torch.Tensor],
    ts: Sequence[float] = PERTURBATION_TS,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    label: str = "top eigenvector",
    batch_size: int = 1000,
) -> PerturbationCurve:
    """Cross-entropy and accuracy on ``data`` at ``θ + t v`` for each ``t`` (default ``linspace(-0.5, 0.5, 21)``, as in
    the otfusion generalization study), eval mode. ``direction`` maps state_dict names to tensors; entries it omits
    (BatchNorm statistics, say) stay fixed."""
    device = device or default_device()
    origin = float_state(model)
    unknown = sorted(set(direction) - set(origin))
    if unknown:
        raise AnalysisError(f"the direction names entries the model does not have: {', '.join(unknown[:3])}")
    full = {
        k: direction[k].to(v.device, v.dtype).reshape(v.shape) if k in direction else torch.zeros_like(v)
        for k, v in origin.items()
    }
    inputs, targets = data
    if len(inputs) == 0:
        raise DatasetError("a perturbation curve needs data, got an empty dataset")
    ts_array = np.asarray(ts, dtype=float)
    coefficients = torch.tensor(np.stack([np.ones_like(ts_array), ts_array], axis=1))
    per_call = auto_points_per_call(model, device)
    losses, accuracies = evaluate_combinations(
        model, [origin, full], coefficients, inputs, targets, batch_size, per_call, device, progress, label
    )
    return PerturbationCurve(ts_array, losses, accuracies, label)


def curve_kind(curve: PerturbationCurve) -> str:
    """``eigenvector``, ``random`` or ``line``; curves stored before kinds were recorded are read by their label."""
    if curve.kind is not None:
        return curve.kind
    return "random" if curve.label.startswith("random") else "eigenvector"


def fitted_curvature(ts: np.ndarray, losses: np.ndarray) -> float:
    """``2 c`` of the least-squares parabola ``a + b t + c t^2`` through the finite points of a curve."""
    finite = np.isfinite(losses)
    if finite.sum() < 3:
        return math.nan
    return float(2 * np.polyfit(np.asarray(ts, dtype=float)[finite], np.asarray(losses, dtype=float)[finite], 2)[0])


def scaled_direction(
    model: nn.Module, direction: Mapping[str, torch.Tensor], scale: StepScale
) -> dict[str, torch.Tensor]:
    """``direction`` rescaled for ``scale`` (see the module docstring), over the model's trainable parameters;
    entries it lacks or that are not trainable are zero."""
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    parts = {
        n: direction[n].detach().to(p.device, p.dtype).reshape(p.shape) for n, p in trainable.items() if n in direction
    }
    norm = math.sqrt(sum(float(d.double().square().sum()) for d in parts.values()))
    if norm == 0:
        raise AnalysisError("the direction is zero on every trainable parameter")
    if scale == "absolute":
        return {n: d / norm for n, d in parts.items()}
    if scale == "relative":
        size = math.sqrt(sum(float(p.double().square().sum()) for p in trainable.values()))
        return {n: d * (size / norm) for n, d in parts.items()}
    result = {}
    for name, d in parts.items():
        weight = trainable[name]
        rows_d = d.reshape(d.shape[0], -1) if d.dim() >= 2 else d.reshape(1, -1)
        rows_w = weight.reshape(weight.shape[0], -1) if weight.dim() >= 2 else weight.reshape(1, -1)
        ratio = rows_w.norm(dim=1) / rows_d.norm(dim=1).clamp_min(1e-12)
        result[name] = (rows_d * ratio[:, None]).reshape(d.shape)
    return result


@dataclass(frozen=True)
class Direction:
    """A direction to perturb along: its label, kind, index and entries (state_dict names)."""

    label: str
    kind: str
    index: int
    entries: Mapping[str, torch.Tensor]


def study_directions(
    model: nn.Module,
    top: TopEigenvalues,
    config: HessianConfig,
    others: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> list[Direction]:
    """Every top-k eigenvector, ``config.random_directions`` random filter-normalised directions (seeds
    ``config.seed + r``) and, for each named state in ``others``, the line ``θ_other - θ`` to it; all scaled by
    ``config.step_scale``."""
    raw = [Direction(f"eigenvector {i + 1}", "eigenvector", i, top.direction(i)) for i in range(len(top.eigenvalues))]
    for r in range(config.random_directions):
        drawn = filter_normalized_direction(model, torch.Generator().manual_seed(config.seed + r))
        raw.append(Direction(f"random {r + 1}", "random", r, drawn))
    origin = float_state(model)
    for index, (name, state) in enumerate((others or {}).items()):
        raw.append(
            Direction(
                f"line to {name}", "line", index, {k: state[k].to(v) - v for k, v in origin.items() if k in state}
            )
        )
    return [Direction(d.label, d.kind, d.index, scaled_direction(model, d.entries, config.step_scale)) for d in raw]


def perturbation_study(
    model: nn.Module,
    operator: HessianOperator | None,
    directions: Sequence[Direction],
    config: HessianConfig,
    evaluation: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> tuple[PerturbationCurve, ...]:
    """The curve along every direction on every split of ``evaluation`` (``config.perturb_points`` steps from
    ``config.perturb_low`` to ``config.perturb_high``), each with its fitted curvature and, when ``operator`` is
    given, ``d^T H d``."""
    ts = step_grid(config.perturb_low, config.perturb_high, config.perturb_points, "perturb_low..perturb_high")
    curves = []
    total = len(directions) * len(evaluation)
    for number, direction in enumerate(directions):
        expected = None
        if operator is not None:
            flat = operator.space.flatten({n: direction.entries[n] for n in operator.space.names})
            expected = float(flat.float() @ operator.matmul(flat[None].float())[0].to(flat.device))
        for offset, (split, data) in enumerate(evaluation.items()):
            step = number * len(evaluation) + offset
            curve = perturbation_curve(
                model,
                direction.entries,
                data,
                ts,
                device,
                lambda done, count, message, step=step: progress(step * count + done, total * count, message),
                direction.label,
                config.batch_size,
            )
            curves.append(
                replace(
                    curve,
                    split=split,
                    kind=direction.kind,
                    index=direction.index,
                    scale=config.step_scale,
                    curvature=fitted_curvature(curve.ts, curve.loss),
                    expected=expected,
                )
            )
    return tuple(curves)


@dataclass(frozen=True, eq=False)
class EigenPlane(Record):
    """Loss and accuracy on the plane ``θ + α d_1 + β d_2`` of the top two eigenvectors (scaled by ``scale``), for
    ``α, β`` in ``ts``; per split, arrays ``(R_β, R_α)`` (rows follow ``β``). Random planes can miss the curvature
    that the Hessian's own directions show (Böttcher & Wheeler, "Visualising the Loss Landscape with Hessian
    Directions", 2022)."""

    ts: np.ndarray
    loss: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    scale: str


def eigen_plane(
    model: nn.Module,
    directions: Sequence[Direction],
    config: HessianConfig,
    evaluation: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> EigenPlane:
    """The surface over ``config.plane_points`` steps a side, from ``config.perturb_low`` to ``config.perturb_high``,
    along the first two ``directions`` (the top two eigenvectors, already scaled), on every split of ``evaluation``."""
    device = device or default_device()
    if len(directions) < 2:
        raise AnalysisError("the eigenvector plane needs the top two eigenvectors (top_k of at least 2)")
    ts = step_grid(config.perturb_low, config.perturb_high, config.plane_points, "perturb_low..perturb_high")
    origin = float_state(model)
    bases = [origin] + [
        {k: d.entries[k].to(v.device, v.dtype) if k in d.entries else torch.zeros_like(v) for k, v in origin.items()}
        for d in directions[:2]
    ]
    beta, alpha = np.meshgrid(ts, ts, indexing="ij")
    grid = np.stack([np.ones(alpha.size), alpha.ravel(), beta.ravel()], axis=1)
    coefficients = torch.tensor(grid)
    per_call = auto_points_per_call(model, device)
    losses, accuracies = {}, {}
    for index, (split, (inputs, targets)) in enumerate(evaluation.items()):
        loss, accuracy = evaluate_combinations(
            model,
            bases,
            coefficients,
            inputs,
            targets,
            config.batch_size,
            per_call,
            device,
            lambda done, total, message, index=index: progress(index * total + done, len(evaluation) * total, message),
            f"eigenvector plane ({split})",
        )
        losses[split] = loss.reshape(len(ts), len(ts))
        accuracies[split] = accuracy.reshape(len(ts), len(ts))
    return EigenPlane(ts, losses, accuracies, config.step_scale)
