"""Vanilla weight averaging and the prediction ensemble, the two baselines of every fusion paper."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from fusion.errors import ArchitectureError, ConfigError
from fusion.methods.base import Context, MethodOutput
from fusion.surgery import with_state


def mixture_weights(count: int, weights: Sequence[float] | None) -> list[float]:
    """Convex weights for ``count`` models: uniform by default; given weights must be finite and non-negative with a
    positive sum, and are rescaled to sum to one."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"need {count} finite non-negative weights with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def average_states(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """``sum_k w_k theta_k`` entry by entry; integer buffers (``num_batches_tracked``) are taken from the first
    model."""
    names = set(states[0])
    for index, state in enumerate(states[1:], start=1):
        if set(state) != names:
            raise ArchitectureError(f"model {index} has other parameters than model 0: architectures differ")
        wrong = [k for k in names if state[k].shape != states[0][k].shape]
        if wrong:
            raise ArchitectureError(
                f"model {index} differs from model 0 in the shape of {', '.join(sorted(wrong)[:3])}: vanilla averaging "
                "needs identical architectures (OT fusion aligns different widths)"
            )
    mix = mixture_weights(len(states), weights)
    return {key: mixed([state[key] for state in states], mix) for key in states[0]}


def streamed_average(
    streams: Sequence[Iterator[tuple[str, torch.Tensor]]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """:func:`average_states` of states given as streams of ``(key, tensor)`` in one key order, one entry of each at
    a time: only the average and one entry per stream are held at once."""
    mix = mixture_weights(len(streams), weights)
    result = {}
    for entries in zip(*streams, strict=True):
        key = entries[0][0]
        if any(other != key for other, _ in entries):
            raise ArchitectureError(f"the models' parameters differ in name or order at {key}")
        result[key] = mixed([tensor for _, tensor in entries], mix)
    return result


def mixed(tensors: Sequence[torch.Tensor], mix: Sequence[float]) -> torch.Tensor:
    """``sum_k w_k t_k`` in float32, back in the first tensor's dtype; an integer buffer (``num_batches_tracked``)
    is the first one's."""
    first = tensors[0]
    if not first.is_floating_point():
        return first.clone()
    total = first.float() * mix[0]
    for w, tensor in zip(mix[1:], tensors[1:]):
        total.add_(tensor.float(), alpha=w)
    return total.to(first.dtype)


class Ensemble(nn.Module):
    """Prediction ensembling: the mean of the members' logits, ``(1/K) sum_k f_k(x)``."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ConfigError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


def run_average(models: Sequence[nn.Module], options: Any, context: Context) -> MethodOutput:
    """Vanilla averaging: ``theta_F = sum_k w_k theta_k`` with no alignment."""
    fused = with_state(models[options.reference], average_states([m.state_dict() for m in models], options.weights))
    return MethodOutput(fused, [None] * len(models), aligned=list(models))


def run_ensemble(models: Sequence[nn.Module], options: Any, context: Context) -> MethodOutput:
    """The prediction ensemble of copies of the models, so that the inputs stay untouched however it is used."""
    return MethodOutput(Ensemble([copy.deepcopy(m) for m in models]).eval(), [None] * len(models))
