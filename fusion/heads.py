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
module's name, and :func:`head_transports` finds their maps together (:func:`fusion.blocks.block_transports`): for
every pair of heads ``(a, b)`` of the two models, the best within-head assignment of each group (a linear assignment of
``d / heads`` dimensions on the group's ground cost), the pair's cost the sum over the groups; then the assignment of
heads of least total cost. The maps are
permutations, so the aligned model computes exactly the source's function. With Sinkhorn, heads are still matched one to
one and whole, and inside each matched pair the dimensions are coupled softly (Imfeld et al., "Transformer Fusion with
Optimal Transport", ICLR 2024, find soft alignment helps transformers); the aligned model is then an approximation, as
every soft map is. Importance-weighted marginals of attention dimensions are refused.

A module is treated as attention when it has a ``num_heads`` attribute and separate linear ``q``, ``k``, ``v`` and
``proj`` layers (:mod:`fusion.zoo.vit`); fused projections (``nn.MultiheadAttention``, timm's ``qkv``) are split into
that layout by :mod:`fusion.attention_layouts` before fusion and joined back after.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fusion.blocks import block_transports
from fusion.groups import NeuronGroup, UnsupportedArchitecture
from fusion.transport import Gram, Transport, TransportOptions


def head_transports(grams: Sequence[Gram], heads: int, options: TransportOptions) -> list[Transport]:
    """The maps of one attention module's groups (their features' products ``grams``, each ``d x d``): a head
    assignment shared by the groups, and per group a within-head assignment for every matched pair of heads; with
    ``solver="sinkhorn"`` each matched pair's dimensions are coupled by an entropic plan instead (Sinkhorn on the
    pair's block of the cost, :func:`fusion.transport.transport_plan`), heads still matched whole and one to one.
    The marginals are uniform: ``options.marginals`` is not read."""
    return block_transports(grams, heads, options)


def set_head_counts(model: nn.Module, groups: Sequence[NeuronGroup]) -> nn.Module:
    """``model`` with each attention module's ``num_heads`` set from its current width: heads keep their width
    ``size / heads``, so a concatenation of K models has K times the heads and a pruning to whole heads fewer."""
    modules = dict(model.named_modules())
    for group in groups:
        if group.heads > 1:
            width = modules[group.layers[0]].weight.shape[0]
            modules[group.attention].num_heads = width // (group.size // group.heads)
    return model


def refuse_head_pruning(groups: Sequence[NeuronGroup], method: str) -> None:
    """Intra-Fusion merges each dropped dimension into the kept dimension nearest to it, wherever that is, so it
    would mix attention heads, or the channels of a grouped convolution's groups (which would then read other groups'
    inputs): refused by name (magnitude pruning and Neuron Transplantation keep whole heads and whole convolution
    groups, :func:`fusion.blocks.whole_blocks`)."""
    attention = next((g.attention for g in groups if g.heads > 1), None)
    if attention is not None:
        raise UnsupportedArchitecture(
            f"{attention}: {method} would merge dimensions across its attention heads; merging whole heads is not "
            "supported yet (magnitude pruning and transplant keep whole heads)"
        )
    tie = next((g.tie for g in groups if g.blocks > 1), None)
    if tie is not None:
        raise UnsupportedArchitecture(
            f"{tie}: {method} would merge channels across its convolution groups; merging whole convolution groups "
            "is not supported yet (magnitude pruning and transplant keep whole convolution groups)"
        )
