"""Neuron norms per group, and what a pruning kept.

For neuron ``i`` of a group the *incoming* norm is ``sqrt(sum ||W_p[i]||^2)`` over the producers' weight rows
(conv kernels included; BatchNorm scales and biases excluded), the *outgoing* norm the same over the consumers' input
columns. Neuron Transplantation ("Model Fusion via Neuron Transplantation", Öz et al. 2024) keeps the largest neurons
of the concatenated model and so sacrifices the small ones; :func:`transplant_survival` tabulates, per group and
parent, which neurons survived, from the fusion report's details.
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
    """The norms of every neuron group of ``model``, in execution order (fused attention projections split first,
    :mod:`fusion.attention_layouts`)."""
    model = split_attention_layers(model)
    groups = neuron_groups(model, example_inputs)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    sizes = group_sizes(state, groups)
    return [group_norms(state, group, sizes) for group in groups]


@dataclass(frozen=True)
class Survival(Record):
    """One group of a Neuron Transplantation: for each neuron of the concatenated model, its parent, its index in
    that parent, its importance and whether it survived the pruning."""

    group: str
    parent: list[int]
    neuron: list[int]
    importance: list[float]
    kept: list[bool]

    def kept_per_parent(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for parent, kept in zip(self.parent, self.kept):
            counts[parent] = counts.get(parent, 0) + int(kept)
        return counts


def network_order(report: dict[str, Any]) -> dict[str, int]:
    """The position of each neuron group in the network, from a fusion report's ``groups`` list (``details`` keys
    come back sorted by name once stored as JSON, which puts ``classifier.1`` before ``features.0``)."""
    return {group["name"]: index for index, group in enumerate(report.get("groups", []))}


def in_network_order(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The ``details["groups"]`` entries of a fusion report (``FusionReport.to_dict()``), in network order."""
    position = network_order(report)
    entries = report.get("details", {}).get("groups", {}).items()
    return sorted(entries, key=lambda entry: position.get(entry[0], len(position)))


def transplant_survival(report: dict[str, Any]) -> list[Survival]:
    """Survival tables of a ``transplant`` fusion from its report (``FusionReport.to_dict()``; its last concatenation
    step), in network order."""
    result = []
    for name, record in in_network_order(report):
        kept = set(record["kept"])
        origin = record["origin"]
        result.append(
            Survival(
                group=name,
                parent=[int(p) for p, _ in origin],
                neuron=[int(i) for _, i in origin],
                importance=[float(v) for v in record["importance"]],
                kept=[i in kept for i in range(len(origin))],
            )
        )
    return result


def pruning_survival(report: dict[str, Any]) -> list[Survival]:
    """Survival tables from an ``intra`` or ``prune`` report (``FusionReport.to_dict()``), in network order: one
    parent (0); for Intra-Fusion, ``merged_into`` in the details says which kept neuron each removed neuron was merged
    into."""
    result = []
    for name, record in in_network_order(report):
        kept = set(record["kept"])
        size = int(record["size"])
        result.append(
            Survival(
                name,
                [0] * size,
                list(range(size)),
                [float(v) for v in record["importance"]],
                [i in kept for i in range(size)],
            )
        )
    return result
