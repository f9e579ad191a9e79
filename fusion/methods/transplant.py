"""Neuron Transplantation (Öz et al., "Model Fusion via Neuron Transplantation", ECML PKDD 2024).

K models of one architecture are concatenated into one wide model, group by group: every producer slice is stacked
(the first layer's rows, biases, BatchNorm parameters and statistics), every weight that reads a group and writes
another becomes block diagonal, and the output layer reads all blocks, ``W = [W_1 ... W_K] / K`` with bias
``mean_k b_k``. Since each block only sees its own model's neurons, the wide model computes exactly
``(1/K) sum_k f_k(x)``, the ensemble of logits. Each group is then pruned back to the reference model's width by
keeping its largest neurons (:mod:`fusion.importance`; the reference implementation uses torch-pruning's magnitude
importance with p=2, which is ``l2sq``), locally per group, and the result is fine-tuned.

Unlike the reference implementation, which keeps ``int(n * (1 - ratio))`` neurons and so one too few for K = 3, 5, 6,
7, every group keeps exactly its original width. Variants: ``all`` (concatenate the K models at once), ``iterative``
(fold the models in one at a time) and ``hierarchical`` (fuse pairs, then pairs of results).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fusion.errors import ArchitectureError, ConfigError
from fusion.groups import Member, NeuronGroup, UnsupportedArchitecture, neuron_groups
from fusion.heads import refuse_head_pruning
from fusion.importance import Importance, loss_gradients, neuron_importance
from fusion.methods.base import Context, GroupReport, MethodOutput
from fusion.surgery import apply_transports, group_sizes, with_state
from fusion.transport import Transport


@dataclass(frozen=True)
class TransplantOptions:
    """Neuron Transplantation's options (defaults of the reference implementation)."""

    importance: Importance = field(default="l2sq", metadata={"help": "neuron magnitude that decides who survives"})
    variant: Literal["all", "iterative", "hierarchical"] = field(
        default="all", metadata={"help": "concatenate all models at once, one at a time, or pairwise in a tree"}
    )
    reference: int = field(default=0, metadata={"help": "index of the model whose widths the pruned model takes"})
    recompute_bn: bool = field(
        default=True, metadata={"help": "recompute BatchNorm statistics on training data after pruning"}
    )

    def __post_init__(self) -> None:
        if self.importance not in ("l1", "l2", "l2sq", "taylor"):
            raise ConfigError(f"importance must be l1, l2, l2sq or taylor, got {self.importance!r}")
        if self.variant not in ("all", "iterative", "hierarchical"):
            raise ConfigError(f"variant must be all, iterative or hierarchical, got {self.variant!r}")


def concatenate(models: Sequence[nn.Module], groups: list[NeuronGroup]) -> nn.Module:
    """The wide model of the module docstring: it computes the mean of the K models' logits.

    Every group of the wide model holds the K models' neurons one model after another. Each model's tensors are
    placed into the wide layout (each slice of a group at its block), so a weight that reads one group and writes
    another becomes block diagonal; tensors with no group along any dimension (the output bias) are averaged, and those
    with no group on their output side (the output layer) are divided by K.
    """
    for group in groups:
        if group.normalized:
            raise UnsupportedArchitecture(
                f"{group.normalized[0]}: a LayerNorm normalises over all the neurons of group {group.name}, so the "
                "concatenated network would not compute the ensemble"
            )
    states = [{k: v.detach() for k, v in m.state_dict().items()} for m in models]
    sizes = [group_sizes(s, groups) for s in states]
    wide_sizes = {g.name: sum(size[g.name] for size in sizes) for g in groups}
    members: dict[str, list[Member]] = {}
    for group in groups:
        for member in group.members():
            members.setdefault(member.key, []).append(member)
    wide: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            wide[key] = first.clone()
            continue
        placed = members.get(key, [])
        if not placed:
            wide[key] = sum(s[key] for s in states) / len(models)
            continue
        dims = sorted({m.dim for m in placed})
        shape = list(first.shape)
        for dim in dims:
            shape[dim] = sum(m.span(wide_sizes)[1] for m in placed if m.dim == dim)
        total = torch.zeros(shape, dtype=first.dtype)
        for k, state in enumerate(states):
            offsets = {g.name: sum(size[g.name] for size in sizes[:k]) for g in groups}
            index = block_positions(state[key].shape, placed, sizes[k], wide_sizes, offsets)
            total.index_put_(index, state[key], accumulate=True)
        produced = any(m in g.producers for g in groups for m in placed)
        wide[key] = total if produced else total / len(models)
    return with_state(models[0], wide).eval()


def block_positions(
    shape: torch.Size,
    placed: list[Member],
    sizes: dict[str, int],
    wide_sizes: dict[str, int],
    offsets: dict[str, int],
) -> tuple[torch.Tensor, ...]:
    """Broadcast index tensors that send each entry of one model's tensor (groups of widths ``sizes``) to its place in
    the wide tensor, where that model's neurons of group g start at ``offsets[g]``; dimensions without a group keep
    their entries."""
    depth = max((m.dim for m in placed), default=-1) + 1
    index = []
    for dim in range(depth):
        positions = torch.arange(shape[dim])
        for member in (m for m in placed if m.dim == dim):
            start, length = member.span(sizes)
            wide_start, _ = member.span(wide_sizes)
            local = torch.arange(length)
            positions[start : start + length] = wide_start + offsets[member.group] * member.repeat + local
        view = [1] * depth
        view[dim] = shape[dim]
        index.append(positions.view(view))
    return tuple(index)


def prune_to(
    model: nn.Module,
    groups: list[NeuronGroup],
    widths: dict[str, int],
    kind: Importance,
    gradients: dict[str, torch.Tensor] | None,
) -> tuple[nn.Module, dict[str, list[int]], dict[str, list[float]]]:
    """Keep the ``widths[g]`` most important neurons of every group (in their original order); returns the pruned
    model, the kept indices and every neuron's importance, per group."""
    refuse_head_pruning(groups, "Neuron Transplantation's pruning")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    sizes = group_sizes(state, groups)
    transports, kept, scores = {}, {}, {}
    for group in groups:
        importance = neuron_importance(state, group, sizes, kind, gradients)
        keep = sorted(torch.topk(importance, widths[group.name]).indices.tolist())
        transports[group.name] = Transport.selection(sizes[group.name], keep)
        kept[group.name], scores[group.name] = keep, importance.tolist()
    return with_state(model, apply_transports(state, groups, transports)).eval(), kept, scores


def transplant_step(
    models: Sequence[nn.Module],
    origins: Sequence[dict[str, list[tuple[int, int]]]],
    groups: list[NeuronGroup],
    widths: dict[str, int],
    options: TransplantOptions,
    context: Context,
) -> tuple[nn.Module, dict[str, list[tuple[int, int]]], dict[str, dict[str, list]]]:
    """Concatenate, then prune; ``origins`` track each neuron's (parent, index) through iterated steps."""
    wide = concatenate(models, groups)
    gradients = None
    if options.importance == "taylor":
        if context.pool is None or context.labels is None:
            raise ConfigError("taylor importance needs labelled training data (data=)")
        inputs, labels = context.labelled_sample(512, seed=0)
        gradients = loss_gradients(wide, inputs, labels)
    pruned, kept, scores = prune_to(wide, groups, widths, options.importance, gradients)
    merged = {g.name: [o for origin in origins for o in origin[g.name]] for g in groups}
    survivors = {name: [merged[name][i] for i in kept[name]] for name in merged}
    record = {
        name: {"origin": [list(o) for o in merged[name]], "importance": scores[name], "kept": kept[name]}
        for name in merged
    }
    return pruned, survivors, record


def run_transplant(models: Sequence[nn.Module], options: TransplantOptions, context: Context) -> MethodOutput:
    """Neuron Transplantation of ``models`` (see the module docstring); ``details["groups"]`` holds, per group, every
    concatenated neuron's (parent, index) origin, importance and whether it was kept (for the last step)."""
    reference = models[options.reference]
    names = set(reference.state_dict())
    if any(set(m.state_dict()) != names for m in models):
        raise ArchitectureError("Neuron Transplantation needs models of one architecture (parameter names differ)")
    groups = neuron_groups(reference.cpu(), context.example())
    widths = group_sizes(reference.state_dict(), groups)
    origins = [
        {g.name: [(k, i) for i in range(group_sizes(m.state_dict(), [g])[g.name])] for g in groups}
        for k, m in enumerate(models)
    ]
    items = list(zip(models, origins))
    steps = 0
    total = {"all": 1, "iterative": len(models) - 1, "hierarchical": len(models) - 1}[options.variant]
    record: dict[str, dict[str, list]] = {}
    while len(items) > 1:
        if options.variant == "all":
            batch, items = items, []
        elif options.variant == "iterative":
            batch, items = items[:2], items[2:]
        else:
            batch, items = items[:2], items[2:]
        fused, survivors, record = transplant_step(
            [m for m, _ in batch], [o for _, o in batch], groups, widths, options, context
        )
        steps += 1
        context.progress(steps, total, f"transplanted {len(batch)} models")
        if options.variant == "hierarchical":
            items = items + [(fused, survivors)]
        else:
            items = [(fused, survivors)] + items
    model, survivors = items[0]
    kept_from = {
        name: {"parent": [p for p, _ in survivors[name]], "neuron": [i for _, i in survivors[name]]}
        for name in survivors
    }
    reports = [GroupReport(g.name, [group_sizes(m.state_dict(), [g])[g.name] for m in models], [], []) for g in groups]
    return MethodOutput(
        model,
        [None] * len(models),
        groups,
        reports,
        details={"kept_from": kept_from, "groups": record, "variant": options.variant},
    )
