"""Neuron norms per group.

For neuron ``i`` of a group the *incoming* norm is ``sqrt(sum ||W_p[i]||^2)`` over the producers' weight rows
(conv kernels included; BatchNorm scales and biases excluded), the *outgoing* norm the same over the consumers' input
columns. Neuron Transplantation ("Model Fusion via Neuron Transplantation", Öz et al. 2024) keeps the largest neurons
of the concatenated model and so sacrifices the small ones; which ones survived, per group and parent, is in the
fusion's report (:class:`fusion.methods.base.Survival`, :meth:`fusion.registry.FusionReport.survival`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fusion.attention_layouts import split_attention_layers
from fusion.groups import NeuronGroup, neuron_groups, slice_norms
from fusion.records import Record
from fusion.surgery import group_sizes


@dataclass(frozen=True)
class GroupNorms(Record):
    """Incoming and outgoing L2 norm of every neuron of one group (lists of floats, one per neuron), and the group's
    attention heads (1 for free neurons; ``None`` in results stored before heads were recorded)."""

    group: str
    incoming: list[float]
    outgoing: list[float]
    heads: int | None = None

    def per_head(self) -> GroupNorms:
        """The norms of whole attention heads: ``sqrt`` of the sum of the squared norms of a head's dimensions."""

        def pooled(values: list[float]) -> list[float]:
            squares = torch.tensor(values, dtype=torch.float64).square()
            return squares.reshape(self.heads or 1, -1).sum(1).sqrt().tolist()

        return GroupNorms(f"{self.group} (heads)", pooled(self.incoming), pooled(self.outgoing), self.heads)


def group_norms(state: dict[str, torch.Tensor], group: NeuronGroup, sizes: dict[str, int]) -> GroupNorms:
    incoming = torch.zeros(sizes[group.name], dtype=torch.float64)
    outgoing = torch.zeros(sizes[group.name], dtype=torch.float64)
    for member in group.producers:
        if member.param == "weight" and member.module in group.layers:
            incoming += slice_norms(state[member.key], member, sizes).square()
    for member in group.consumers:
        outgoing += slice_norms(state[member.key], member, sizes).square()
    return GroupNorms(group.name, incoming.sqrt().tolist(), outgoing.sqrt().tolist(), group.heads)


def neuron_norms(model: nn.Module, example_inputs: torch.Tensor) -> list[GroupNorms]:
    """The incoming and outgoing L2 norm of every neuron of every neuron group of ``model``.

    For neuron ``i`` of a group with producer weights ``W_p`` (rows, conv kernels included) and consumer weights
    ``V_q`` (input columns),

    .. math::

        \\|w_i\\|_{in} = \\Big(\\sum_p \\|W_p[i]\\|^2\\Big)^{1/2}, \\qquad
        \\|w_i\\|_{out} = \\Big(\\sum_q \\|V_q[:, i]\\|^2\\Big)^{1/2};

    biases and normalisation parameters are left out. Neuron Transplantation keeps the neurons of largest norm of the
    concatenated parents (Öz et al., "Model Fusion via Neuron Transplantation", 2024).

    Parameters
    ----------
    model : nn.Module
        Any network :func:`fusion.groups.neuron_groups` supports; fused attention projections are split first
        (:mod:`fusion.attention_layouts`). Not modified.
    example_inputs : torch.Tensor
        A batch of inputs ``(N, ...)``; only the shape matters.

    Returns
    -------
    list[GroupNorms]
        One per group, in execution order: ``incoming`` and ``outgoing``, lists of ``size`` floats, and the group's
        attention ``heads``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from analysis import neuron_norms
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[3.0, 4, 0, 0], [1, 0, 0, 0], [0, 0, 0, 2]]))
    ...     _ = model[2].weight.copy_(torch.tensor([[1.0, 0, 6], [0, 0, 8]]))
    >>> (norms,) = neuron_norms(model, torch.zeros(1, 4))
    >>> norms.group, norms.incoming, norms.outgoing
    ('0', [5.0, 1.0, 2.0], [1.0, 0.0, 10.0])
    """
    model = split_attention_layers(model)
    groups = neuron_groups(model, example_inputs)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    sizes = group_sizes(state, groups)
    return [group_norms(state, group, sizes) for group in groups]


def network_order(report: dict[str, Any]) -> dict[str, int]:
    """The position of each neuron group in the network, from a fusion report's ``groups`` list
    (``FusionReport.to_dict()``)."""
    return {group["name"]: index for index, group in enumerate(report.get("groups", []))}
