"""Neuron importance per group, for choosing which neurons survive a pruning.

For neuron ``i`` of a group, with ``s_i`` ranging over its slices in every member weight (the producers' rows, the
BatchNorm scale ``gamma_i``, the consumers' input columns; biases and BatchNorm shifts are not included, as in
torch-pruning's ``MagnitudeImportance``):

- ``l1``: ``sum_s ||s_i||_1``; ``l2``: ``sqrt(sum_s ||s_i||_2^2)``; ``l2sq``: ``sum_s ||s_i||_2^2`` (the Neuron
  Transplantation reference: torch-pruning's magnitude importance with ``p=2``);
- ``taylor``: ``sum_s |s_i * dL/ds_i|``, the first-order Taylor estimate of the loss change when the neuron is removed
  (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from fusion.errors import ConfigError
from fusion.groups import NeuronGroup, neuron_slices, slice_norms

Importance = Literal["l1", "l2", "l2sq", "taylor"]


def neuron_importance(
    state: dict[str, torch.Tensor],
    group: NeuronGroup,
    sizes: Mapping[str, int],
    kind: Importance = "l2sq",
    gradients: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Importance ``(n,)`` of every neuron of ``group`` in ``state``, whose groups have widths ``sizes``
    (:func:`fusion.surgery.group_sizes`); see the module docstring."""
    size = sizes[group.name]
    total = torch.zeros(size, dtype=torch.float64)
    for member in group.members():
        if member.param != "weight":
            continue
        if kind == "l1":
            total += slice_norms(state[member.key], member, sizes, 1)
        elif kind in ("l2", "l2sq"):
            total += slice_norms(state[member.key], member, sizes).square()
        elif kind == "taylor":
            if gradients is None:
                raise ConfigError("taylor importance needs gradients of the loss")
            values = neuron_slices(state[member.key], member, sizes).double()
            total += (values * neuron_slices(gradients[member.key], member, sizes).double()).abs().sum(1)
        else:
            raise ConfigError(f"unknown importance {kind!r}; expected l1, l2, l2sq or taylor")
    return total.sqrt() if kind == "l2" else total


def loss_gradients(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Gradients of the mean cross-entropy over ``(inputs, labels)`` for every parameter, in eval mode."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start : start + batch_size], labels[start : start + batch_size]
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum") / len(inputs)
        loss.backward()
    gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return gradients
