"""The loss along a direction, ``L(θ + t v)`` for ``t`` in the otfusion generalization study's grid: along the top
eigenvector beside a random filter-normalised direction, evaluated as a landscape (:mod:`analysis.landscape`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from analysis import AnalysisError
from analysis.landscape import auto_points_per_call, evaluate_combinations
from analysis.states import float_state
from fusion.device import default_device
from fusion.errors import DatasetError
from fusion.progress import Progress, no_progress
from fusion.records import Record

PERTURBATION_TS = tuple(float(t) for t in np.linspace(-0.5, 0.5, 21))
"""The otfusion generalization study's ``t`` grid for the loss along ``θ + t v``."""


@dataclass(frozen=True, eq=False)
class PerturbationCurve(Record):
    """Loss and accuracy at ``θ + t v`` for ``ts`` (``(T,)``), along the direction named ``label``."""

    ts: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    label: str


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
