"""Maps that keep blocks of neurons whole: attention heads and convolution groups.

Some groups (:attr:`fusion.groups.NeuronGroup.blocks`) hold ``n`` neurons in ``G`` equal consecutive blocks of
``w = n / G`` that a map may not break up: an attention's heads (:mod:`fusion.heads`), and the channels of one
convolution group of a grouped convolution (Xie et al., "Aggregated Residual Transformations for Deep Neural Networks",
CVPR 2017, ResNeXt; Radosavovic et al., "Designing Network Design Spaces", CVPR 2020, RegNet). A convolution with
``G`` groups computes output block ``g`` from input block ``g`` alone, so a permutation of its input or output
channels keeps the function only when it is block-structured,

.. math::

    P(g w + j) = s(g) w + p_g(j),

one permutation ``s`` of the blocks (shared by every group of a tie: the input and the output of the convolution)
composed with a permutation ``p_g`` inside each block (free for each group).

:func:`block_transports` finds such maps as in Git Re-Basin's weight matching (Ainsworth et al., ICLR 2023) and OT
fusion (Singh & Jaggi, NeurIPS 2020), one level up: for every pair of blocks ``(a, b)`` of the two models, the best
assignment of ``a``'s neurons to ``b``'s on the group's ground cost ``C`` (a linear assignment of ``w x w``), whose cost
is the pair's cost; then the assignment of blocks of least total cost,

.. math::

    s^\\star = \\arg\\min_s \\sum_a \\min_{p} \\sum_j C_{a w + j,\\ s(a) w + p(j)}.

With a given ``s`` (a tie's later groups, whose blocks must follow the first) only the pairs ``(a, s(a))`` are solved.
With Sinkhorn the blocks are still matched one to one, and inside each matched pair the neurons are coupled by an
entropic plan: the plan is block-diagonal after the block assignment, so that a soft map keeps every convolution group
reading only its own inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fusion.errors import ArchitectureError, ConfigError
from fusion.groups import NeuronGroup
from fusion.transport import (
    Gram,
    Transport,
    TransportOptions,
    assignment,
    gram_cost,
    normalize_cost,
    transport_plan,
)


def block_transports(
    grams: Sequence[Gram], blocks: int, options: TransportOptions, order: np.ndarray | None = None
) -> list[Transport]:
    """The block-structured maps of groups that share one assignment of blocks (module docstring).

    Parameters
    ----------
    grams : Sequence[Gram]
        The features' products of every group, each ``n x n`` (one width in both models).
    blocks : int
        ``G``, the blocks of each group (``n / G`` neurons each).
    options : TransportOptions
        The ground cost (``metric``, ``normalize_rows``, ``cost_normalization``), the solver inside matched blocks
        (``solver``, ``reg``) and the ``correction``; the marginals are uniform (``options.marginals`` is not read).
    order : numpy.ndarray, optional
        ``(G,)``: the block assignment to keep (block ``a`` to block ``order[a]``); found from the summed pair costs
        of all ``grams`` when ``None``.

    Returns
    -------
    list[Transport]
        One map per gram: the permutation (or, with Sinkhorn, the block-diagonal plan) within the matched blocks.

    Examples
    --------
    Two blocks of two neurons, swapped and shuffled inside; the map finds both:

    >>> import torch
    >>> from fusion.blocks import block_transports
    >>> from fusion.transport import Gram, TransportOptions
    >>> b = torch.eye(4)
    >>> a = b[[3, 2, 0, 1]]  # neuron 0 of the model being aligned is neuron 3 of the reference
    >>> (found,) = block_transports([Gram.of(a, b)], 2, TransportOptions())
    >>> found.permutation  # target j takes source permutation[j]
    array([2, 3, 1, 0])
    """
    costs = [
        normalize_cost(gram_cost(g, options.metric, options.normalize_rows), options.cost_normalization).double().cpu()
        for g in grams
    ]
    size = costs[0].shape[0]
    if any(c.shape != (size, size) for c in costs):
        raise ConfigError("blocks of neurons are aligned between models of one width only")
    width = size // blocks
    pieces = [c.numpy().reshape(blocks, width, blocks, width).transpose(0, 2, 1, 3) for c in costs]
    pairs = [(a, b) for a in range(blocks) for b in range(blocks)] if order is None else list(enumerate(order))
    within = np.empty((len(costs), blocks, blocks, width), dtype=np.int64)
    pair = np.zeros((blocks, blocks))
    for index, piece in enumerate(pieces):
        for a, b in pairs:
            within[index, a, b], cost = assignment(piece[a, b])
            pair[a, b] += cost
    matched = assignment(pair)[0] if order is None else np.asarray(order)
    transports = []
    for index, cost in enumerate(costs):
        plan = np.zeros((size, size))
        for a, b in enumerate(matched):
            if options.solver == "sinkhorn":
                piece = torch.from_numpy(np.ascontiguousarray(pieces[index][a, b]))
                soft = transport_plan(piece, solver="sinkhorn", reg=options.reg) / blocks
                plan[a * width : (a + 1) * width, b * width : (b + 1) * width] = soft
            else:
                plan[a * width + np.arange(width), b * width + within[index, a, b]] = 1.0 / size
        total = float((torch.from_numpy(plan) * cost).sum())
        transports.append(Transport.from_plan(plan, total, options.correction, cost.float()))
    return transports


def block_targets(size: int, blocks: int, order: np.ndarray, within: Sequence[np.ndarray]) -> np.ndarray:
    """Where each of ``size`` neurons goes when block ``a`` moves to block ``order[a]`` and its neuron ``i`` to
    position ``within[a][i]`` inside it."""
    width = size // blocks
    return np.concatenate([order[a] * width + np.asarray(within[a]) for a in range(blocks)])


def block_order(transport: Transport, width: int) -> np.ndarray:
    """``(G,)``: the block each source block of ``width`` neurons is sent to by a block-structured map (a source block
    without mass, dropped by a selection, gets -1); :class:`ArchitectureError` when a block is split between targets,
    or a target block receives two source blocks."""
    n, m = transport.shape
    mass = transport.plan.reshape(n // width, width, m // width, width).sum((1, 3))
    sent = mass > 0
    if (sent.sum(1) > 1).any() or (sent.sum(0) > 1).any():
        raise ArchitectureError(f"the map does not keep blocks of {width} neurons whole")
    return np.where(sent.any(1), sent.argmax(1), -1)


def within_blocks(transport: Transport, width: int) -> Transport:
    """A block-structured map between equal widths with its block assignment taken out: each source block keeps its
    place and receives its matched block's map, ``T'[a, a] = T[a, s(a)]`` (blocks of ``width``). Applied to one side
    of a grouped convolution it aligns each convolution group's neurons with the reference's matched group in place,
    so that the convolution's weight stays block-diagonal (the features of the other side, :mod:`fusion.alignment`).

    Examples
    --------
    >>> import numpy as np
    >>> from fusion.blocks import block_order, within_blocks
    >>> from fusion.transport import Transport
    >>> swap = Transport.selection(4, [3, 2, 0, 1])  # block {0, 1} moves whole, block {2, 3} moves reversed
    >>> block_order(swap, 2)
    array([1, 0])
    >>> within_blocks(swap, 2).permutation  # the same maps inside the blocks, the blocks left in place
    array([0, 1, 3, 2])
    """
    order = block_order(transport, width)
    columns = np.concatenate([b * width + np.arange(width) for b in order])
    return Transport.from_plan(transport.plan[:, columns], transport.cost, transport.correction)


def whole_blocks(
    importance: Mapping[str, torch.Tensor], groups: Sequence[NeuronGroup], keep: Mapping[str, int]
) -> dict[str, list[int]]:
    """The neurons kept, per group with blocks, when every tie keeps its ``keep[group] / w`` blocks of greatest
    importance, all of their neurons with them (in their original order). A block's importance is the sum of its
    neurons' ``importance`` over the tie's groups, so that every group of a tie keeps the same blocks (an attention's
    heads; a grouped convolution's input and output groups, so that it keeps whole convolution groups) and every block
    keeps its width ``w``."""
    totals: dict[str, torch.Tensor] = {}
    for group in groups:
        if group.blocks > 1:
            width = group.size // group.blocks
            per_block = importance[group.name].reshape(-1, width).sum(1)
            totals[group.tie] = totals.get(group.tie, 0) + per_block
    kept = {}
    for group in groups:
        if group.blocks > 1:
            width = group.size // group.blocks
            chosen = sorted(torch.topk(totals[group.tie], keep[group.name] // width).indices.tolist())
            kept[group.name] = [b * width + i for b in chosen for i in range(width)]
    return kept
