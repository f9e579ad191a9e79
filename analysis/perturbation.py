"""The loss along a direction, ``L(θ + t d)``, for the Hessian perturbation study: along every top-k eigenvector,
random filter-normalised directions and the line to another model, evaluated as a landscape
(:mod:`analysis.landscape`), with the curvature each curve shows.

Step scales (``step_scale``): ``absolute`` makes ``d`` a unit vector over the trainable parameters, so ``t`` is the
parameter distance ``||Δθ||``; ``relative`` makes ``||d|| = ||θ||``, so ``t = ||Δθ|| / ||θ||``; ``filter``
rescales every filter ``d_i`` (a row of a weight, along its output dimension) to the norm of the model's filter
``θ_i`` (Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018), and every one-dimensional
parameter (a bias, a normalisation scale) as one filter; random directions keep Li et al.'s zero on those.

Curvature (:func:`fit_curvature`): a parabola fitted by least squares to ``L(θ + t d)`` gives ``2 c``, the curve's
curvature in the units of ``t``, fitted on the central points where a quadratic is a good model of the curve
(:func:`quadratic_range`), not on the whole range: along a top eigenvector the loss stops being quadratic well
inside ``±0.5``. Beside it ``d^T H d`` from one Hessian-vector product, the curvature at ``t = 0`` that the fit
approaches as its range shrinks; for a unit eigenvector (``absolute``) ``d^T H d = λ_i``, ``relative`` multiplies it
by ``||θ||^2``. Where the two differ by more than :data:`AGREEMENT` the curve says so and names the smaller range on
which they would agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from analysis import AnalysisError
from analysis.curvature.hessian import HessianOperator
from analysis.grid import step_grid
from analysis.hessian_config import HessianConfig, StepScale
from analysis.hessian_spectrum import TopEigenvalues
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
    ``index``), the ``scale`` of ``t``, the fitted curvature ``2 c`` on the points ``|t| <= fit_range``
    (:func:`fit_curvature`) and ``d^T H d`` (``expected``; ``None`` where the Hessian was not multiplied), whether the
    two ``agrees`` within :data:`AGREEMENT`, and where they do not, the ``agreeing_range`` of ``|t|`` on which the
    stored points would agree (``None`` where no window of 3 or more does).

    Curves stored before these were recorded read them as ``None``; those stored before ``fit_range`` hold the fit
    over the whole range."""

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
    fit_range: float | None = None
    agrees: bool | None = None
    agreeing_range: float | None = None


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


AGREEMENT = 0.1
"""The fitted curvature ``2 c`` agrees with ``d^T H d`` when ``|2 c - d^T H d| <= 0.1 |d^T H d|``."""

QUADRATIC_BIAS = 0.01
"""The bias of ``2 c`` that :func:`quadratic_range` allows a window, relative to ``|2 c|``."""

CENTRAL_POINTS = 5
"""The fewest points the reported curvature is fitted on (3 where a curve has fewer finite points)."""

SAME_STEP = 1e-9
"""Relative tolerance for two ``|t|`` to be one step (``±t`` of a ``linspace`` differ in their last bits)."""


def within(ts: np.ndarray, bound: float) -> np.ndarray:
    """The mask of the steps with ``|t| <= bound``."""
    return np.abs(np.asarray(ts, dtype=float)) <= bound * (1 + SAME_STEP)


def symmetric_windows(ts: np.ndarray, losses: np.ndarray, least: int = 3) -> list[float]:
    """The bounds ``T`` of the windows ``|t| <= T`` around ``t = 0`` that hold at least ``least`` finite points of a
    curve, smallest first: each ``T`` is the ``|t|`` of one of its points.

    >>> symmetric_windows(np.linspace(-1, 1, 5), np.ones(5))
    [0.5, 1.0]
    """
    sizes = np.sort(np.abs(np.asarray(ts, dtype=float)[np.isfinite(losses)]))
    # printed to 12 digits: 0.1, not 0.10000000000000009 from linspace's rounding
    bounds = [float(f"{b:.12g}") for b, after in zip(sizes, [*sizes[1:], math.inf]) if after > b * (1 + SAME_STEP)]
    return [b for b in bounds if int(within(sizes, b).sum()) >= least]


def fitted_curvature(ts: np.ndarray, losses: np.ndarray, bound: float | None = None, degree: int = 2) -> float:
    """``2 c`` of the least-squares polynomial ``a + b t + c t^2 (+ d t^3 + e t^4 ...)`` of ``degree`` through the
    finite points of a curve with ``|t| <= bound`` (every finite point when ``None``); NaN with ``degree`` points or
    fewer.

    >>> ts = np.linspace(-1, 1, 21)
    >>> round(fitted_curvature(ts, 3 * ts**2 + ts**4, bound=0.2), 4), round(fitted_curvature(ts, 3 * ts**2 + ts**4), 4)
    (6.0886, 7.8714)
    """
    ts = np.asarray(ts, dtype=float)
    losses = np.asarray(losses, dtype=float)
    chosen = np.isfinite(losses) & (True if bound is None else within(ts, bound))
    if chosen.sum() <= degree:
        return math.nan
    # fitted in t / max|t|, where the powers of t stay of one size
    scale = float(np.abs(ts[chosen]).max()) or 1.0
    return float(2 * np.polyfit(ts[chosen] / scale, losses[chosen], degree)[-3] / scale**2)


def quadratic_range(ts: np.ndarray, losses: np.ndarray, tolerance: float = QUADRATIC_BIAS) -> float | None:
    """The largest window ``|t| <= T`` of a curve's points on which a parabola is a good model of the loss: the
    smallest window of :data:`CENTRAL_POINTS` finite points, grown point by point while the fitted ``2 c`` of a
    parabola and of a quartic on the window differ by at most ``tolerance`` of the quartic's; ``None`` below 3 finite
    points.

    Why: with ``L(t) = L_0 + g t + λ t^2 / 2 + κ_3 t^3 / 6 + κ_4 t^4 / 24 + O(t^5)``, the parabola fitted on a
    symmetric window keeps the odd terms out of ``c`` (they are orthogonal to ``1`` and ``t^2`` there) but takes
    part of the quartic: on a dense grid over ``[-T, T]``, ``t^4`` projects onto ``t^2`` with the coefficient
    ``6 T^2 / 7``, so ``2 c = λ + κ_4 T^2 / 14 + O(T^4)``. The quartic fit absorbs that term, ``2 c_4 = λ + O(T^4)``,
    so ``|2 c - 2 c_4|`` estimates the parabola's bias on the window (on an asymmetric window it takes in the cubic
    term's bias too), and bounding it by 1 % of ``|2 c_4|`` keeps the reported curvature within about 1 % of the
    curve's own curvature at ``t = 0``, ten times below :data:`AGREEMENT`, so that a disagreement with ``d^T H d``
    is not the fit's. The window stops growing at the first that fails: beyond it the Taylor series stops being a
    useful model and a later window that passes does so by cancellation. The rule reads the curve alone, so it
    holds without the Hessian (``expected`` unknown) and cannot steer the fit towards the number it is checked
    against. The central :data:`CENTRAL_POINTS` points are kept even where they fail (with 3 a parabola
    interpolates and leaves nothing to judge it by); the agreement flag then tells. A window bounded by the loss
    change ``λ T^2 / 2`` would need ``λ`` (the Hessian) and a guess of the scale on which the loss bends; here the
    points measure it.

    >>> ts = np.linspace(-0.5, 0.5, 21)
    >>> [quadratic_range(ts, 10 * ts**2 + quartic * ts**4) for quartic in (0, 1, 5)]
    [0.5, 0.3, 0.1]
    """
    windows = symmetric_windows(ts, losses, CENTRAL_POINTS) or symmetric_windows(ts, losses, 3)[-1:]
    if not windows:
        return None
    chosen = windows[0]
    for bound in windows[1:]:
        quadratic = fitted_curvature(ts, losses, bound)
        quartic = fitted_curvature(ts, losses, bound, degree=4)
        if not abs(quadratic - quartic) <= tolerance * abs(quartic):
            break
        chosen = bound
    return chosen


def curvature_agrees(fitted: float | None, expected: float | None, tolerance: float = AGREEMENT) -> bool | None:
    """Whether ``|fitted - expected| <= tolerance |expected|``; ``None`` where either is unknown or not finite."""
    if fitted is None or expected is None or not (math.isfinite(fitted) and math.isfinite(expected)):
        return None
    return abs(fitted - expected) <= tolerance * abs(expected)


def agreeing_range(
    ts: np.ndarray, losses: np.ndarray, expected: float, below: float, tolerance: float = AGREEMENT
) -> float | None:
    """The largest window ``|t| <= T`` with ``T < below`` and at least 3 finite points whose fitted ``2 c`` agrees
    with ``expected`` (:func:`curvature_agrees`): the windows shrink from ``below`` point by point; ``None`` where
    none agrees."""
    for bound in reversed(symmetric_windows(ts, losses, 3)):
        if bound < below * (1 - SAME_STEP) and curvature_agrees(
            fitted_curvature(ts, losses, bound), expected, tolerance
        ):
            return bound
    return None


def fit_curvature(curve: PerturbationCurve, expected: float | None = None) -> PerturbationCurve:
    """``curve`` with its ``curvature``: ``2 c`` of the parabola fitted on its points ``|t| <= fit_range``
    (:func:`quadratic_range`), and with ``expected`` (``d^T H d``) whether they agree and, if not, the
    ``agreeing_range`` on which the stored points would.

    >>> ts = np.linspace(-0.5, 0.5, 21)
    >>> curve = fit_curvature(PerturbationCurve(ts, 5 * ts**2 + 80 * ts**4, np.ones(21), "v"), expected=10.0)
    >>> round(curve.curvature, 2), curve.fit_range, curve.agrees, curve.agreeing_range
    (11.77, 0.1, False, 0.05)
    """
    bound = quadratic_range(curve.ts, curve.loss)
    fitted = math.nan if bound is None else fitted_curvature(curve.ts, curve.loss, bound)
    agrees = curvature_agrees(fitted, expected)
    smaller = None
    if agrees is False and bound is not None and expected is not None:
        smaller = agreeing_range(curve.ts, curve.loss, expected, bound)
    return replace(curve, curvature=fitted, expected=expected, fit_range=bound, agrees=agrees, agreeing_range=smaller)


def disagreement(curve: PerturbationCurve) -> str | None:
    """A sentence naming the curve's direction, its fitted curvature and ``d^T H d`` and the range on which they
    would agree, where they disagree (``agrees`` is ``False``); ``None`` otherwise."""
    if curve.agrees is not False or curve.curvature is None or curve.expected is None or curve.fit_range is None:
        return None
    where = f" ({curve.split})" if curve.split else ""
    off = (curve.curvature - curve.expected) / abs(curve.expected)
    said = (
        f"{curve.label}{where}: fitted curvature {curve.curvature:.4g} on |t| ≤ {curve.fit_range:.3g} against "
        f"dᵀHd = {curve.expected:.4g} ({off:+.0%}, more than {AGREEMENT:.0%} apart). "
    )
    if curve.agreeing_range is not None:
        return said + (
            f"They agree on |t| ≤ {curve.agreeing_range:.3g}: use a smaller perturb range, e.g. "
            f"±{curve.agreeing_range:.3g}."
        )
    smallest = symmetric_windows(curve.ts, curve.loss, 3)[:1]
    below = f" than ±{smallest[0]:.3g}" if smallest else ""
    return said + f"No window of 3 or more of its points agrees: use a smaller perturb range{below}."


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
            expected = float(flat.float() @ operator.matmul(flat[:, None].float())[:, 0].to(flat.device))
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
            labelled = replace(curve, split=split, kind=direction.kind, index=direction.index, scale=config.step_scale)
            curves.append(fit_curvature(labelled, expected))
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
