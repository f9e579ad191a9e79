"""Attention heads as neuron groups, and the maps that keep them whole.

torch-pruning's dependency graph puts the query, key and value projections of an attention module into one group with
the output projection's columns. Their neurons are not free to move one by one: the ``d`` outputs of ``q``, ``k`` and
``v`` fall into ``heads`` consecutive blocks of ``d / heads``, and head ``h``'s attention weights
``softmax(q_h k_h^T / sqrt(d / heads))`` only ever mix head ``h``'s values. The function is unchanged exactly when

- the heads are permuted (one permutation for the queries, keys and values of a head), and
- within a head, one permutation is applied to the query and the key dimensions (``q_h k_h^T`` is a sum over them) and
  another to the value dimensions and the output projection's matching columns.

:func:`fusion.groups.split_attention` therefore splits the traced group into a query/key group (producers ``q`` and
``k``, no consumers) and a value group (producer ``v``, consumer ``proj``), both with ``heads`` blocks and the attention
module's name, and :func:`head_transports` finds their maps together: for every pair of heads ``(a, b)`` of the two
models, the best within-head assignment of each group (a linear assignment of ``d / heads`` dimensions on the group's
ground cost), the pair's cost the sum over the groups; then the assignment of heads of least total cost. The maps are
permutations, so the aligned model computes exactly the source's function. With Sinkhorn, heads are still matched one to
one and whole, and inside each matched pair the dimensions are coupled softly (Imfeld et al., "Transformer Fusion with
Optimal Transport", ICLR 2024, find soft alignment helps transformers); the aligned model is then an approximation, as
every soft map is. Importance-weighted marginals of attention dimensions are refused.

A module is treated as attention when it has a ``num_heads`` attribute and separate linear ``q``, ``k``, ``v`` and
``proj`` layers (:mod:`fusion.zoo.vit`); fused projections (``nn.MultiheadAttention``, timm's ``qkv``) are split into
that layout by :mod:`fusion.attention_layouts` before fusion and joined back after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fusion.errors import ConfigError
from fusion.groups import NeuronGroup, UnsupportedArchitecture
from fusion.transport import (
    Gram,
    Transport,
    TransportOptions,
    assignment,
    gram_cost,
    normalize_cost,
    transport_plan,
)


def head_transports(grams: Sequence[Gram], heads: int, options: TransportOptions) -> list[Transport]:
    """The maps of one attention module's groups (their features' products ``grams``, each ``d x d``): a head
    assignment shared by the groups, and per group a within-head assignment for every matched pair of heads; with
    ``solver="sinkhorn"`` each matched pair's dimensions are coupled by an entropic plan instead (Sinkhorn on the
    pair's block of the cost, :func:`fusion.transport.transport_plan`), heads still matched whole and one to one.
    The marginals are uniform: ``options.marginals`` is not read."""
    costs = [
        normalize_cost(gram_cost(g, options.metric, options.normalize_rows), options.cost_normalization).double().cpu()
        for g in grams
    ]
    size = costs[0].shape[0]
    if any(c.shape != (size, size) for c in costs):
        raise ConfigError("attention heads are aligned between models of one width only")
    width = size // heads
    blocks = [c.numpy().reshape(heads, width, heads, width).transpose(0, 2, 1, 3) for c in costs]
    within = np.empty((len(costs), heads, heads, width), dtype=np.int64)
    pair = np.zeros((heads, heads))
    for index, block in enumerate(blocks):
        for a in range(heads):
            for b in range(heads):
                within[index, a, b], cost = assignment(block[a, b])
                pair[a, b] += cost
    matched, _ = assignment(pair)
    transports = []
    for index, cost in enumerate(costs):
        plan = np.zeros((size, size))
        for a, b in enumerate(matched):
            if options.solver == "sinkhorn":
                block = torch.from_numpy(np.ascontiguousarray(blocks[index][a, b]))
                soft = transport_plan(block, solver="sinkhorn", reg=options.reg) / heads
                plan[a * width : (a + 1) * width, b * width : (b + 1) * width] = soft
            else:
                plan[a * width + np.arange(width), b * width + within[index, a, b]] = 1.0 / size
        total = float((torch.from_numpy(plan) * cost).sum())
        transports.append(Transport.from_plan(plan, total, options.correction, cost.float()))
    return transports


def head_targets(size: int, heads: int, order: np.ndarray, within: Sequence[np.ndarray]) -> np.ndarray:
    """Where each of ``size`` dimensions goes when head ``a`` moves to head ``order[a]`` and its dimension ``i`` to
    position ``within[a][i]`` inside it."""
    width = size // heads
    return np.concatenate([order[a] * width + np.asarray(within[a]) for a in range(heads)])


def set_head_counts(model: nn.Module, groups: Sequence[NeuronGroup]) -> nn.Module:
    """``model`` with each attention module's ``num_heads`` set from its current width: heads keep their width
    ``size / heads``, so a concatenation of K models has K times the heads and a pruning to whole heads fewer."""
    modules = dict(model.named_modules())
    for group in groups:
        if group.heads > 1:
            width = modules[group.layers[0]].weight.shape[0]
            modules[group.attention].num_heads = width // (group.size // group.heads)
    return model


def whole_heads(
    importance: Mapping[str, torch.Tensor], groups: Sequence[NeuronGroup], keep: Mapping[str, int]
) -> dict[str, list[int]]:
    """The dimensions kept, per attention group, when every attention keeps its ``keep[group] / (size / heads)``
    heads of greatest importance, all of their dimensions with them (in their original order). A head's importance is
    the sum of its dimensions' ``importance`` over the attention's groups (query/key and value), so both groups keep
    the same heads and every head keeps its width."""
    totals: dict[str, torch.Tensor] = {}
    for group in groups:
        if group.heads > 1:
            width = group.size // group.heads
            per_head = importance[group.name].reshape(-1, width).sum(1)
            totals[group.attention] = totals.get(group.attention, 0) + per_head
    kept = {}
    for group in groups:
        if group.heads > 1:
            width = group.size // group.heads
            heads = sorted(torch.topk(totals[group.attention], keep[group.name] // width).indices.tolist())
            kept[group.name] = [h * width + i for h in heads for i in range(width)]
    return kept


def refuse_head_pruning(groups: Sequence[NeuronGroup], method: str) -> None:
    """Intra-Fusion merges each dropped dimension into the kept dimension nearest to it, wherever that is, so it
    would mix attention heads: refused by name (magnitude pruning and Neuron Transplantation keep whole heads)."""
    attention = next((g.attention for g in groups if g.heads > 1), None)
    if attention is not None:
        raise UnsupportedArchitecture(
            f"{attention}: {method} would merge dimensions across its attention heads; merging whole heads is not "
            "supported yet (magnitude pruning and transplant keep whole heads)"
        )
