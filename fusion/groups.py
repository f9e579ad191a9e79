"""Neuron groups: the parameter slices that share one neuron (channel) index.

A group holds, for ``size`` neurons, its *producers* (the slices along dim 0 of the weight and bias of every linear or
conv layer that writes the neurons, and of the BatchNorm parameters and running statistics that follow them) and its
*consumers* (the slices along dim 1 of the weight of every layer that reads them). Residual additions tie the channels
of several layers together; they then belong to one group, so one permutation or transport map serves all of them.
A flatten between a conv and a linear layer makes each channel own ``H*W`` consecutive input columns of the linear
layer (``repeat``). The network's inputs and its output logits belong to no group: they are never permuted.

The groups come from torch-pruning's dependency graph (Fang et al., "DepGraph: Towards Any Structural Pruning",
CVPR 2023), so any model it can trace is supported; layers it cannot describe as slices raise
:class:`UnsupportedArchitecture`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from fusion.errors import ArchitectureError

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class UnsupportedArchitecture(ArchitectureError):
    """The model contains a layer whose neurons cannot be expressed as parameter slices."""


@dataclass(frozen=True)
class Member:
    """One parameter (or buffer) slice of a group: entries ``[k*repeat, (k+1)*repeat)`` of ``dim`` belong to
    neuron k."""

    module: str
    param: str
    dim: int
    repeat: int = 1

    @property
    def key(self) -> str:
        return f"{self.module}.{self.param}" if self.module else self.param


@dataclass(frozen=True)
class NeuronGroup:
    """The slices of a model that move together when neurons are permuted, transported, merged or pruned.

    ``producers``: slices along the output side (weight rows, biases, BatchNorm parameters and statistics);
    ``consumers``: slices along the input side of the next layers; ``layers``: the conv/linear modules among the
    producers, in execution order; ``chains``: for each of those layers, the module whose output carries the group's
    neurons (the BatchNorm directly following the layer, or the layer itself).
    """

    name: str
    size: int
    producers: tuple[Member, ...]
    consumers: tuple[Member, ...]
    layers: tuple[str, ...]
    chains: tuple[tuple[str, str], ...]

    def members(self) -> tuple[Member, ...]:
        return self.producers + self.consumers

    @property
    def outputs(self) -> tuple[str, ...]:
        """The modules hooked for activation features: the end of every layer's chain."""
        return tuple(end for _, end in self.chains)


def trace_order(model: nn.Module, example_inputs: torch.Tensor) -> tuple[dict[nn.Module, int], list[nn.Module]]:
    """One forward pass: the execution order of the leaf modules, and the conv/linear layers that produce the model's
    output (the logits, which stay fixed)."""
    order: dict[nn.Module, int] = {}
    produced: dict[int, nn.Module] = {}

    def record(module: nn.Module, inputs: object, output: object) -> None:
        order.setdefault(module, len(order))
        if isinstance(module, LAYERS):
            produced[id(output)] = module

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            output = model(example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    if id(output) not in produced:
        raise UnsupportedArchitecture("the model's output must come straight from a linear or conv layer")
    return order, [produced[id(output)]]


def neuron_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[NeuronGroup]:
    """The neuron groups of ``model``, in the order the network computes them.

    Parameters
    ----------
    model : any network torch-pruning can trace, made of linear/conv layers (``groups=1``), BatchNorm, activations,
        pooling, flatten and residual additions.
    example_inputs : a batch of inputs ``(N, ...)``; only shapes matter.

    Raises :class:`UnsupportedArchitecture` for layers that cannot be sliced (grouped convolutions, LayerNorm over
    channels, bare parameters, concatenations that split a channel's index range).
    """
    was_training = model.training
    model.eval()
    try:
        names = {module: name for name, module in model.named_modules()}
        example_inputs = example_inputs[:1]
        try:
            order, fixed = trace_order(model, example_inputs)
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
            found = list(graph.get_all_groups(ignored_layers=fixed))
        except UnsupportedArchitecture:
            raise
        except Exception as exc:
            raise UnsupportedArchitecture(
                f"the model could not be traced on an input of shape {tuple(example_inputs.shape)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        groups = [describe(graph, group, names, order) for group in found]
    finally:
        model.train(was_training)
    claimed: dict[str, str] = {}
    for group in groups:
        for member in group.members():
            key = f"{member.key}@{member.dim}"
            if key in claimed:
                raise UnsupportedArchitecture(f"{member.key} belongs to two groups ({claimed[key]}, {group.name})")
            claimed[key] = group.name
    modules = dict(model.named_modules())
    return sorted(groups, key=lambda g: order[modules[g.layers[0]]])


def describe(
    graph: tp.DependencyGraph, group: tp.Group, names: dict[nn.Module, str], order: dict[nn.Module, int]
) -> NeuronGroup:
    size = len(group.items[0].idxs)
    producers: list[Member] = []
    consumers: list[Member] = []
    producer_modules: list[nn.Module] = []
    for item in group.items:
        module = item.dep.target.module
        if isinstance(module, nn.Parameter):
            raise UnsupportedArchitecture("bare nn.Parameter tensors in the forward pass are not supported")
        if not isinstance(module, (*LAYERS, *NORMS)):
            if any(True for _ in module.parameters(recurse=False)):
                raise UnsupportedArchitecture(
                    f"{names.get(module, module)}: layers of type {type(module).__name__} are not supported"
                )
            continue
        name = names[module]
        out_side = graph.is_out_channel_pruning_fn(item.dep.handler)
        repeat = slice_repeat(item.idxs, item.root_idxs, size, name)
        if isinstance(module, LAYERS):
            if getattr(module, "groups", 1) != 1:
                raise UnsupportedArchitecture(f"{name}: grouped or depthwise convolutions are not supported")
            if out_side:
                producers.append(Member(name, "weight", 0, repeat))
                if module.bias is not None:
                    producers.append(Member(name, "bias", 0, repeat))
                producer_modules.append(module)
            else:
                consumers.append(Member(name, "weight", 1, repeat))
        elif isinstance(module, NORMS):
            for param in ("weight", "bias"):
                if getattr(module, param, None) is not None:
                    producers.append(Member(name, param, 0, repeat))
            if module.running_mean is not None:
                producers += [Member(name, "running_mean", 0, repeat), Member(name, "running_var", 0, repeat)]
            producer_modules.append(module)
    layers = sorted((m for m in producer_modules if isinstance(m, LAYERS)), key=lambda m: order.get(m, 0))
    if not layers:
        raise UnsupportedArchitecture("a neuron group without a producing linear or conv layer")
    return NeuronGroup(
        name=names[layers[0]],
        size=size,
        producers=tuple(producers),
        consumers=tuple(consumers),
        layers=tuple(names[m] for m in layers),
        chains=tuple((names[layer], names[end]) for layer, end in chains(producer_modules, order)),
    )


def chains(modules: list[nn.Module], order: dict[nn.Module, int]) -> list[tuple[nn.Module, nn.Module]]:
    """Each conv/linear producer with its BatchNorm if one directly follows it in execution order, else itself."""
    pairs = []
    ranked = sorted(modules, key=lambda m: order.get(m, 0))
    for index, module in enumerate(ranked):
        if isinstance(module, LAYERS):
            following = ranked[index + 1] if index + 1 < len(ranked) else None
            chained = isinstance(following, NORMS) and order.get(following, 0) == order.get(module, 0) + 1
            pairs.append((module, following if chained else module))
    return pairs


def slice_repeat(idxs: list[int], root_idxs: list[int], size: int, name: str) -> int:
    """How many consecutive entries each neuron owns in this member (``H*W`` after a flatten, else 1)."""
    if len(idxs) % size:
        raise UnsupportedArchitecture(f"{name}: {len(idxs)} entries cannot be split among {size} neurons")
    repeat = len(idxs) // size
    mapping = sorted(zip(idxs, root_idxs))
    if [i for i, _ in mapping] != list(range(len(idxs))) or [r for _, r in mapping] != [
        i // repeat for i in range(len(idxs))
    ]:
        raise UnsupportedArchitecture(f"{name}: its channels map to non-contiguous slices (concatenation or split)")
    return repeat


def groups_by_module(groups: list[NeuronGroup]) -> tuple[dict[str, NeuronGroup], dict[str, tuple[NeuronGroup, int]]]:
    """``(output_group, input_group)``: the group a conv/linear module writes, and the group (with its repeat) it reads.

    Modules reading the network input, or writing the logits, are absent from the respective mapping.
    """
    writes: dict[str, NeuronGroup] = {}
    reads: dict[str, tuple[NeuronGroup, int]] = {}
    for group in groups:
        for member in group.producers:
            if member.param == "weight" and member.module in group.layers:
                writes[member.module] = group
        for member in group.consumers:
            reads[member.module] = (group, member.repeat)
    return writes, reads
