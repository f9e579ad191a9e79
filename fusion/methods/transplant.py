"""Neuron Transplantation (Öz et al., "Model Fusion via Neuron Transplantation", ECML PKDD 2024).

K models of one architecture are concatenated into one wide model, group by group: every producer slice is stacked
(the first layer's rows, biases, BatchNorm parameters and statistics), every weight that reads a group and writes
another becomes block diagonal, and the output layer reads all blocks, ``W = [W_1 ... W_K] / K`` with bias
``mean_k b_k``. Since each block only sees its own model's neurons, the wide model computes exactly
``(1/K) sum_k f_k(x)``, the ensemble of logits. Each group is then pruned back to the reference model's width by
keeping its largest neurons (:mod:`fusion.importance`; the reference implementation uses torch-pruning's magnitude
importance with p=2, which is ``l2sq``), locally per group, and the result is fine-tuned.

A grouped convolution (ResNeXt, RegNet) is block diagonal already: concatenating K models gives it ``K G`` groups of
the same width, block ``g`` of model ``k`` reading model ``k``'s input block ``g`` (its grouped weights simply stacked).
The pruning then keeps whole convolution groups, the same in the convolution's input and output groups
(:func:`fusion.blocks.whole_blocks`, by the blocks' summed importance): the result has the reference's ``G`` groups of
``n / G`` channels, so its architecture and parameter shapes are the reference's. Pruning the same number of channels
inside each of the ``K G`` groups instead would give ``K G`` narrower groups, another architecture.

Unlike the reference implementation, which keeps ``int(n * (1 - ratio))`` neurons and so one too few for K = 3, 5, 6,
7, every group keeps exactly its original width. Variants: ``all`` (concatenate the K models at once), ``iterative``
(fold the models in one at a time) and ``hierarchical`` (fuse pairs, then pairs of results).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from fusion.alignment import AlignOptions, align, verify_alignment
from fusion.blocks import whole_blocks
from fusion.errors import ArchitectureError, ConfigError
from fusion.groups import Member, NeuronGroup, neuron_groups
from fusion.heads import set_head_counts
from fusion.importance import Importance, loss_gradients, neuron_importance
from fusion.methods.base import Context, Details, GroupReport, MethodOutput, Survival
from fusion.options import Options
from fusion.records import Record
from fusion.surgery import apply_transports, group_sizes, with_state
from fusion.train import TrainConfig
from fusion.transport import Transport

NT_FINETUNE = TrainConfig(epochs=30, lr=0.01, optimizer="sgd")
"""The fine-tune after the pruning: the reference implementation's (its experiment 11: 30 epochs of SGD, lr 0.01,
momentum 0.9), with batches of 64 and a cosine schedule instead of a constant rate."""


Variant = Literal["all", "iterative", "hierarchical"]


@dataclass(frozen=True)
class TransplantOptions(Options):
    """Neuron Transplantation's options (defaults of the reference implementation)."""

    importance: Importance = field(default="l2sq", metadata={"help": "neuron magnitude that decides who survives"})
    variant: Variant = field(
        default="all", metadata={"help": "concatenate all models at once, one at a time, or pairwise in a tree"}
    )
    reference: int = field(default=0, metadata={"help": "index of the model whose widths the pruned model takes"})
    recompute_bn: bool = field(
        default=True, metadata={"help": "recompute BatchNorm statistics on training data after pruning"}
    )
    alignment: Literal["weights", "activations"] = field(
        default="weights",
        metadata={"help": "how models are aligned first when a LayerNorm'd group must be shared (exact OT)"},
    )


@dataclass(frozen=True)
class TransplantedGroup(Record):
    """One group of the last concatenation: every concatenated neuron's ``origin`` (parent, index in the parent), its
    ``importance``, and the positions ``kept`` by the pruning."""

    origin: list[tuple[int, int]]
    importance: list[float]
    kept: list[int]

    def survival(self, name: str) -> Survival:
        kept = set(self.kept)
        every = range(len(self.origin))
        parents, neurons = [p for p, _ in self.origin], [i for _, i in self.origin]
        return Survival(name, parents, neurons, self.importance, [i in kept for i in every])


@dataclass(frozen=True)
class KeptFrom(Record):
    """The neurons of one group of the result, in order: the parent each came from and its index there."""

    parent: list[int]
    neuron: list[int]


@dataclass(frozen=True)
class TransplantDetails(Details):
    """What a transplantation kept: per transplanted group (by name), where every neuron of the result came from
    (``kept_from``) and the last concatenation's neurons (``groups``); the ``variant``; and the LayerNorm'd groups
    that were aligned and averaged instead (``shared``; empty in reports stored before they were)."""

    kept_from: dict[str, KeptFrom]
    groups: dict[str, TransplantedGroup]
    variant: Variant
    shared: list[str] = field(default_factory=list)
    survival_heading: ClassVar[str] = "Which neurons survived the transplantation"

    def survival(self) -> list[Survival]:
        return [group.survival(name) for name, group in self.groups.items()]


def concatenate(
    models: Sequence[nn.Module], groups: list[NeuronGroup], shared: frozenset[str] = frozenset()
) -> nn.Module:
    """The wide model of the module docstring: without ``shared`` groups it computes the mean of the K models' logits.

    Every group of the wide model holds the K models' neurons one model after another. Each model's tensors are
    placed into the wide layout (each slice of a group at its block), so a weight that reads one group and writes
    another becomes block diagonal; tensors that produce no concatenated group are the mean of the K models' (the
    output layer, and every producer of a ``shared`` group). The groups named in ``shared`` (LayerNorm'd residual
    streams, aligned beforehand) are not concatenated: the K models' neurons sit at the same positions and are
    averaged, every sub-layer reading them reads the mean stream, and every sub-layer writing them adds the mean of
    the K models' outputs. Attention modules get ``K`` times their heads.
    """
    states = [{k: v.detach() for k, v in m.state_dict().items()} for m in models]
    sizes = [group_sizes(s, groups) for s in states]
    for name in shared:
        if len({size[name] for size in sizes}) > 1:
            raise ArchitectureError(f"group {name} is averaged, not concatenated, and needs one width in every model")
    wide_sizes = {g.name: sizes[0][g.name] if g.name in shared else sum(s[g.name] for s in sizes) for g in groups}
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
            if not any(m.grouped_input for m in placed if m.dim == dim):
                shape[dim] = sum(m.span(wide_sizes)[1] for m in placed if m.dim == dim)
        total = torch.zeros(shape, dtype=first.dtype)
        for k, state in enumerate(states):
            offsets = {g.name: 0 if g.name in shared else sum(size[g.name] for size in sizes[:k]) for g in groups}
            index = block_positions(state[key].shape, placed, sizes[k], wide_sizes, offsets)
            total.index_put_(index, state[key], accumulate=True)
        produced = any(m in g.producers for g in groups if g.name not in shared for m in placed)
        wide[key] = total if produced else total / len(models)
    return set_head_counts(with_state(models[0], wide), groups).eval()


def block_positions(
    shape: torch.Size,
    placed: list[Member],
    sizes: dict[str, int],
    wide_sizes: dict[str, int],
    offsets: dict[str, int],
) -> tuple[torch.Tensor, ...]:
    """Broadcast index tensors that send each entry of one model's tensor (groups of widths ``sizes``) to its place in
    the wide tensor, where that model's neurons of group g start at ``offsets[g]``; dimensions without a group keep
    their entries, and so does a grouped convolution's input dimension (its groups are stacked with its rows)."""
    depth = max((m.dim for m in placed), default=-1) + 1
    index = []
    for dim in range(depth):
        positions = torch.arange(shape[dim])
        for member in (m for m in placed if m.dim == dim and not m.grouped_input):
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
    shared: frozenset[str] = frozenset(),
) -> tuple[nn.Module, dict[str, list[int]], dict[str, list[float]]]:
    """Keep the ``widths[g]`` most important neurons of every group but the ``shared`` ones (in their original
    order), attention heads and convolution groups whole (:func:`fusion.blocks.whole_blocks`); returns the pruned
    model, the kept indices and every neuron's importance, per pruned group."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    sizes = group_sizes(state, groups)
    pruned = [g for g in groups if g.name not in shared]
    scores = {g.name: neuron_importance(state, g, sizes, kind, gradients) for g in pruned}
    kept = whole_blocks(scores, pruned, widths)
    for group in pruned:
        if group.name not in kept:
            kept[group.name] = sorted(torch.topk(scores[group.name], widths[group.name]).indices.tolist())
    transports = {g.name: Transport.selection(sizes[g.name], kept[g.name]) for g in pruned}
    model = with_state(model, apply_transports(state, groups, transports))
    return set_head_counts(model, groups).eval(), kept, {k: v.tolist() for k, v in scores.items()}


def transplant_step(
    models: Sequence[nn.Module],
    origins: Sequence[dict[str, list[tuple[int, int]]]],
    groups: list[NeuronGroup],
    widths: dict[str, int],
    options: TransplantOptions,
    context: Context,
    shared: frozenset[str],
) -> tuple[nn.Module, dict[str, list[tuple[int, int]]], dict[str, TransplantedGroup]]:
    """Concatenate, then prune; ``origins`` track each concatenated neuron's (parent, index) through iterated
    steps."""
    wide = concatenate(models, groups, shared)
    gradients = None
    if options.importance == "taylor":
        if context.pool is None or context.labels is None:
            raise ConfigError("taylor importance needs labelled training data (data=)")
        inputs, labels = context.labelled_sample(512, seed=0)
        gradients = loss_gradients(wide, inputs, labels)
    pruned, kept, scores = prune_to(wide, groups, widths, options.importance, gradients, shared)
    merged = {name: [o for origin in origins for o in origin[name]] for name in kept}
    survivors = {name: [merged[name][i] for i in kept[name]] for name in merged}
    record = {name: TransplantedGroup(merged[name], scores[name], kept[name]) for name in merged}
    return pruned, survivors, record


def stream_aligned(
    models: Sequence[nn.Module], groups: list[NeuronGroup], options: TransplantOptions, context: Context
) -> tuple[list[nn.Module], list[dict[str, Transport] | None]]:
    """Every model permuted onto the reference in every group (exact OT, :func:`fusion.alignment.align`, verified to
    keep its function), so that the LayerNorm'd groups can be shared; the maps (``None`` for the reference)."""
    reference = models[options.reference]
    align_options = AlignOptions(mode=options.alignment, sweeps=3)
    sample = context.sample(align_options.samples, 0) if options.alignment == "activations" else None
    probe = context.probe if context.probe is not None else context.example()
    aligned: list[nn.Module] = []
    maps: list[dict[str, Transport] | None] = []
    for index, model in enumerate(models):
        if index == options.reference:
            aligned.append(model), maps.append(None)
            continue
        alignment = align(model, reference, groups, align_options, sample, context.device)
        verify_alignment(model, alignment.model, groups, alignment.transports, probe, context.device)
        aligned.append(alignment.model.cpu().eval()), maps.append(alignment.transports)
    return aligned, maps


def run_transplant(models: Sequence[nn.Module], options: TransplantOptions, context: Context) -> MethodOutput:
    """Neuron Transplantation of ``models`` (see the module docstring); its details are a
    :class:`TransplantDetails`."""
    reference = models[options.reference]
    names = set(reference.state_dict())
    if any(set(m.state_dict()) != names for m in models):
        raise ArchitectureError("Neuron Transplantation needs models of one architecture (parameter names differ)")
    groups = neuron_groups(reference.cpu(), context.example())
    widths = group_sizes(reference.state_dict(), groups)
    shared = frozenset(g.name for g in groups if g.normalized)
    maps: list[dict[str, Transport] | None] = [None] * len(models)
    if shared:
        models, maps = stream_aligned(models, groups, options, context)
    origins = [
        {
            g.name: [(k, source_index(maps[k], g.name, i)) for i in range(group_sizes(m.state_dict(), [g])[g.name])]
            for g in groups
            if g.name not in shared
        }
        for k, m in enumerate(models)
    ]
    items = list(zip(models, origins))
    steps = 0
    total = {"all": 1, "iterative": len(models) - 1, "hierarchical": len(models) - 1}[options.variant]
    record: dict[str, TransplantedGroup] = {}
    while len(items) > 1:
        if options.variant == "all":
            batch, items = items, []
        else:
            batch, items = items[:2], items[2:]
        fused, survivors, record = transplant_step(
            [m for m, _ in batch], [o for _, o in batch], groups, widths, options, context, shared
        )
        steps += 1
        context.progress(steps, total, f"transplanted {len(batch)} models")
        if options.variant == "hierarchical":
            items = items + [(fused, survivors)]
        else:
            items = [(fused, survivors)] + items
    model, survivors = items[0]
    kept_from = {name: KeptFrom([p for p, _ in survivors[name]], [i for _, i in survivors[name]]) for name in survivors}
    reports = [GroupReport(g.name, [group_sizes(m.state_dict(), [g])[g.name] for m in models], [], []) for g in groups]
    return MethodOutput(
        model,
        maps,
        groups,
        reports,
        details=TransplantDetails(kept_from, record, options.variant, sorted(shared)),
    )


def source_index(transports: dict[str, Transport] | None, group: str, index: int) -> int:
    """The parent's index of the neuron at ``index`` of an aligned model's group (a permutation gathers
    ``new[j] = old[permutation[j]]``)."""
    if transports is None:
        return index
    permutation = transports[group].permutation
    assert permutation is not None
    return int(permutation[index])
