"""Model surgery: a neuron group's map applied to every member of the group, and a network rebuilt around a new
state_dict. Alignment, averaging, pruning, transplantation and the demo story all change networks through these.

A map ``M: (n, m)`` (a :class:`fusion.transport.Transport`) takes a group of ``n`` neurons to ``m``: every producer
(the rows of the layers that write the group, their biases and BatchNorm entries) becomes ``M^T`` applied along its
neuron dimension and every consumer (the input columns of the layers that read it) the same on its input side, in
blocks of ``repeat`` entries per neuron (a flatten after a conv). A permutation is an index gather, exact.

The weight ``W: (G w_out, w_in, k, k)`` of a convolution with ``G`` groups stands for the block-diagonal weight
``D = diag(W_1, ..., W_G): (G w_out, G w_in, k, k)`` of the same convolution without groups. Maps act on ``D``: its
rows by the output group's map ``P``, its columns by the input group's map ``Q``, ``D' = P^T D Q``; when both keep
the convolution groups whole with one block assignment (:mod:`fusion.blocks`), ``D'`` is block-diagonal again, and
its diagonal blocks are the new grouped weight (``G'`` groups after a concatenation or a pruning to whole groups).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Literal

import numpy as np
import torch
from torch import nn

from fusion.blocks import block_targets
from fusion.errors import ArchitectureError
from fusion.groups import NORMS, Member, NeuronGroup
from fusion.transport import Transport

Step = tuple[Member, Transport, Literal["producer", "consumer"], Mapping[str, int] | None]


def gathered(tensor: torch.Tensor, dim: int, permutation: np.ndarray, repeat: int) -> torch.Tensor:
    """``tensor`` with the neurons along ``dim`` (blocks of ``repeat`` entries) taken in the order ``permutation``,
    as one gather of whole rows of a ``(outer * neurons, repeat * inner)`` view: along an inner dimension (a
    consumer's input channels) it is several times faster than ``index_select`` on the CPU."""
    shape = tensor.shape
    outer, neurons = math.prod(shape[:dim]), shape[dim] // repeat
    index = torch.as_tensor(permutation, dtype=torch.long, device=tensor.device)
    rows = (torch.arange(outer, device=tensor.device)[:, None] * neurons + index[None, :]).reshape(-1)
    moved = tensor.reshape(outer * neurons, -1).index_select(0, rows)
    return moved.reshape(*shape[:dim], len(index) * repeat, *shape[dim + 1 :])


def transform(
    tensor: torch.Tensor,
    member: Member,
    transport: Transport,
    side: Literal["producer", "consumer"],
    sizes: Mapping[str, int] | None = None,
) -> torch.Tensor:
    """Apply a group's map to one member: ``new[j] = sum_i M[i, j] old[i]`` along ``member.dim`` (blocks of
    ``member.repeat`` entries per neuron), with ``M`` the producer or consumer matrix; an index gather for a
    permutation, so that hard alignments are exact. ``sizes`` (the current widths of the groups) place a member that
    shares its dimension with other groups; the rest of that dimension is kept. A grouped convolution's weight is
    mapped as its block-diagonal weight (:func:`through_convolution_groups`)."""
    if member.block_width:
        return through_convolution_groups(tensor, [(member, transport, side, sizes)])
    n, m = transport.shape
    start, length = member.span(sizes) if sizes is not None else (0, n * member.repeat)
    whole = tensor.shape[member.dim]
    expected = member.extent(sizes) if sizes is not None else length
    if length != n * member.repeat or whole != expected:
        raise ArchitectureError(
            f"{member.key}: dim {member.dim} has {whole} entries, the map expects {n} x {member.repeat}"
            + (f" from entry {start}" if start else "")
        )
    piece = tensor.narrow(member.dim, start, length)
    if transport.permutation is not None:
        moved = gathered(piece, member.dim, transport.permutation, member.repeat)
    else:
        matrix = (transport.producer if side == "producer" else transport.consumer).to(tensor.device, tensor.dtype)
        rows = piece.movedim(member.dim, 0)
        blocks = rows.reshape(n, member.repeat, -1)
        result = torch.einsum("ij,irk->jrk", matrix, blocks).reshape(m * member.repeat, *rows.shape[1:])
        moved = result.movedim(0, member.dim)
    if length == whole:
        return moved.contiguous()
    head = tensor.narrow(member.dim, 0, start)
    tail = tensor.narrow(member.dim, start + length, whole - start - length)
    return torch.cat([head, moved, tail], member.dim)


def apply_transports(
    state: dict[str, torch.Tensor], groups: list[NeuronGroup], transports: dict[str, Transport]
) -> dict[str, torch.Tensor]:
    """A new state_dict with every group's map applied to its producers and consumers (groups without a map stay).
    Groups are mapped one after another; a dimension shared by several groups finds each slice at the widths of the
    groups mapped so far."""
    return dict(mapped_tensors(state, groups, transports))


def mapped_tensors(
    state: dict[str, torch.Tensor], groups: list[NeuronGroup], transports: dict[str, Transport]
) -> Iterator[tuple[str, torch.Tensor]]:
    """The entries of :func:`apply_transports`, in ``state``'s order, each computed only when the caller asks for it,
    so a caller that uses each before the next (a streamed average) never holds the whole mapped state. An entry no
    map touches is ``state``'s own tensor."""
    sizes = group_sizes(state, groups)
    steps: dict[str, list[Step]] = {}
    for group in groups:
        transport = transports.get(group.name)
        if transport is None:
            continue
        widths = dict(sizes)
        for member in group.producers:
            steps.setdefault(member.key, []).append((member, transport, "producer", widths))
        for member in group.consumers:
            steps.setdefault(member.key, []).append((member, transport, "consumer", widths))
        sizes[group.name] = transport.shape[1]
    for key, tensor in state.items():
        done = steps.get(key, [])
        if any(member.block_width for member, *_ in done):
            tensor = through_convolution_groups(tensor, done)
        else:
            for member, transport, side, widths in done:
                tensor = transform(tensor, member, transport, side, widths)
        yield key, tensor


def through_convolution_groups(weight: torch.Tensor, steps: list[Step]) -> torch.Tensor:
    """The grouped convolution weight ``W: (G w_out, w_in, k, k)`` after ``steps`` (the maps of its output group on
    its rows and of its input group on its columns), applied to its block-diagonal weight ``D`` (module docstring):
    ``D' = P^T D Q``, whose diagonal blocks of ``w_out x w_in`` are returned. :class:`ArchitectureError` when ``D'``
    is not block-diagonal: the maps move the convolution groups apart (a block assignment of one side alone, or two
    different ones)."""
    member, transport = steps[0][0], steps[0][1]
    blocks = transport.shape[0] // member.block_width
    rows, columns = weight.shape[0] // blocks, weight.shape[1]
    dense = torch.zeros(blocks, rows, blocks, columns, *weight.shape[2:], dtype=weight.dtype, device=weight.device)
    index = torch.arange(blocks, device=weight.device)
    dense[index, :, index] = weight.unflatten(0, (blocks, rows))
    dense = dense.reshape(blocks * rows, blocks * columns, *weight.shape[2:])
    for member, transport, side, widths in steps:
        dense = transform(dense, dataclasses.replace(member, block_width=0), transport, side, widths)
    after = dense.shape[0] // rows
    if dense.shape[0] % rows or dense.shape[1] != after * columns:
        raise ArchitectureError(
            f"{member.module}: the maps leave {dense.shape[0]} outputs and {dense.shape[1]} inputs, not whole "
            f"convolution groups of {rows} outputs and {columns} inputs"
        )
    index = torch.arange(after, device=weight.device)
    diagonal = dense.reshape(after, rows, after, columns, *weight.shape[2:])[index, :, index]
    if torch.count_nonzero(diagonal) != torch.count_nonzero(dense):
        raise ArchitectureError(
            f"{member.module}: the maps of its input and output channels move its convolution groups differently; "
            "a grouped convolution needs one assignment of convolution groups on both sides"
        )
    return diagonal.reshape(after * rows, columns, *weight.shape[2:]).contiguous()


def with_state(model: nn.Module, state: dict[str, torch.Tensor], share: bool = False) -> nn.Module:
    """A deep copy of ``model`` holding ``state`` (each tensor copied once, in the model's dtype and device); layers
    whose widths changed are resized (their ``in_features``, ``out_channels``, ``num_features``... updated), so this
    serves unequal widths, concatenation and pruning. With ``share``, a tensor already in the model's dtype and on
    its device is not copied: the model holds it (for fresh tensors that the caller hands over, which halves the
    peak memory of building a large model from a new state)."""
    current = dict(model.state_dict(keep_vars=True))
    if set(current) != set(state):
        raise ArchitectureError(
            f"the state and the model differ in their keys: {sorted(set(current) ^ set(state))[:4]}"
        )
    memo: dict[int, torch.Tensor] = {}
    resized = set()
    for key, tensor in current.items():
        value = state[key].detach().to(device=tensor.device, dtype=tensor.dtype, copy=not share)
        if isinstance(tensor, nn.Parameter):
            value = nn.Parameter(value, requires_grad=tensor.requires_grad)
        memo.setdefault(id(tensor), value)
        if tensor.shape != value.shape:
            resized.add(key.rpartition(".")[0])
    result = copy.deepcopy(model, memo)
    modules = dict(result.named_modules())
    for name in resized:
        resize_attributes(modules[name])
    return result


def resize_attributes(module: nn.Module) -> None:
    """Module attributes that state widths, set from the (resized) weights; a depthwise conv stays depthwise, and a
    grouped conv keeps the width of its groups (whole groups are concatenated or pruned), so their number follows."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            module.groups = module.in_channels = module.out_channels = int(weight.shape[0])
        else:
            if module.groups > 1:
                module.groups = int(weight.shape[0]) // (module.out_channels // module.groups)
            module.out_channels, module.in_channels = int(weight.shape[0]), int(weight.shape[1]) * module.groups
    elif isinstance(module, NORMS):
        module.num_features = int((weight if weight is not None else module.running_mean).shape[0])
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (int(weight.shape[0]),)


def group_sizes(state: dict[str, torch.Tensor], groups: list[NeuronGroup]) -> dict[str, int]:
    """The width of every group in a model's state_dict (widths may differ between models of one architecture)."""
    sizes = {}
    for group in groups:
        member = next(m for m in group.producers if m.param == "weight" and m.module in group.layers)
        sizes[group.name] = state[member.key].shape[0] // member.repeat
    return sizes


def permuted(model: nn.Module, groups: list[NeuronGroup], seed: int) -> nn.Module:
    """A copy of ``model`` computing the same function with the neurons of every group shuffled by a seeded random
    permutation (blocks shuffled whole, one order per tie, with their neurons shuffled inside: attention heads and
    convolution groups, :mod:`fusion.blocks`): the test that an alignment finds its way back."""
    rng = np.random.default_rng(seed)
    orders: dict[str, np.ndarray] = {}
    shuffles = {}
    for group in groups:
        if group.blocks > 1:
            order = orders.setdefault(group.tie, rng.permutation(group.blocks))
            width = group.size // group.blocks
            targets = block_targets(group.size, group.blocks, order, [rng.permutation(width) for _ in order])
        else:
            targets = rng.permutation(group.size)
        plan = np.zeros((group.size, group.size))
        plan[np.arange(group.size), targets] = 1.0 / group.size
        shuffles[group.name] = Transport.from_plan(plan)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return with_state(model, apply_transports(state, groups, shuffles)).eval()
