"""Neuron groups: the parameter slices that share one neuron (channel) index.

A group holds, for ``size`` neurons, its *producers* (the slices along dim 0 of the weight and bias of every linear or
conv layer that writes the neurons, and of the BatchNorm parameters and running statistics that follow them) and its
*consumers* (the slices along dim 1 of the weight of every layer that reads them). Residual additions tie the channels
of several layers together; they then belong to one group, so one permutation or transport map serves all of them.
A flatten between a conv and a linear layer makes each channel own ``H*W`` consecutive input columns of the linear
layer (``repeat``). A concatenation makes one tensor dimension hold several groups one after another (a DenseNet
layer's BatchNorm and input columns span the channels of every earlier layer of its block): each member then records
the groups that precede it along that dimension (``before``), so its slice is found for any widths of the groups. A
depthwise convolution ties each output channel to the same input channel: its rows are producers of its input's
group. A grouped convolution (ResNeXt, RegNet) maps the channels of its input's ``G`` blocks to its own output's ``G``
blocks, block ``g`` to block ``g``: its input group and its output group then carry ``blocks = G`` and one ``tie``, so
that both keep their channels in whole blocks and move the blocks alike (:func:`tie_convolution_groups`). LayerNorm
over the channels and bare per-channel parameters (a layer scale, a class token) are per-neuron producers too; a group
that a LayerNorm normalises records it (``normalized``): permuting such a group is exact, but concatenating models is
not their ensemble. An attention module's projections form a query/key group and a value group
(:func:`split_attention`), whose maps keep its heads whole (:mod:`fusion.heads`). The network's inputs and its output
logits belong to no group: they are never permuted.

The groups come from torch-pruning's dependency graph (Fang et al., "DepGraph: Towards Any Structural Pruning",
CVPR 2023), so any model it can trace is supported; layers it cannot describe as slices raise
:class:`UnsupportedArchitecture`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from fusion.errors import ArchitectureError

if TYPE_CHECKING:
    import torch_pruning as tp

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CHANNEL_NORMS = (*NORMS, nn.LayerNorm)
PROJECTIONS = ("q", "k", "v", "proj")


class UnsupportedArchitecture(ArchitectureError):
    """The model contains a layer whose neurons cannot be expressed as parameter slices."""


@dataclass(frozen=True)
class Member:
    """One parameter (or buffer) slice of group ``group``: along ``dim``, after the slices of the groups ``before``
    (``(group, repeat)`` pairs, in order), entries ``[start + k*repeat, start + (k+1)*repeat)`` belong to neuron k;
    the slices of the groups ``after`` follow it.

    The weight ``W: (out, in / G, k, k)`` of a grouped convolution with ``G`` groups has a ``block_width``: the
    channels of one convolution group along ``dim``, ``out / G`` for its rows (``dim`` 0, sliced as any rows) and
    ``in / G`` for its input channels (``dim`` 1, :attr:`grouped_input`), where the weight holds only one group's
    channels: input channel ``i = g * (in / G) + j`` owns ``W[g * (out / G) : (g + 1) * (out / G), j]``, the rows of
    its convolution group at position ``j``."""

    module: str
    param: str
    dim: int
    repeat: int = 1
    group: str = ""
    before: tuple[tuple[str, int], ...] = ()
    after: tuple[tuple[str, int], ...] = ()
    block_width: int = 0

    @property
    def grouped_input(self) -> bool:
        """Whether the member is the input side of a grouped convolution's weight (see the class docstring)."""
        return self.block_width > 0 and self.dim == 1

    @property
    def key(self) -> str:
        return f"{self.module}.{self.param}" if self.module else self.param

    def span(self, sizes: Mapping[str, int]) -> tuple[int, int]:
        """``(start, length)`` of the slice along ``dim`` when the groups have widths ``sizes``."""
        start = sum(sizes[name] * repeat for name, repeat in self.before)
        return start, sizes[self.group] * self.repeat

    def extent(self, sizes: Mapping[str, int]) -> int:
        """The length of the whole dimension when the groups have widths ``sizes``."""
        start, length = self.span(sizes)
        return start + length + sum(sizes[name] * repeat for name, repeat in self.after)


def neuron_slices(tensor: torch.Tensor, member: Member, sizes: Mapping[str, int]) -> torch.Tensor:
    """``(n, d)``: the entries of ``tensor`` that belong to each of the ``n = sizes[member.group]`` neurons; for a
    grouped convolution's input channels, channel ``g * w + j`` owns the rows of convolution group ``g`` at input
    position ``j`` (``W: (G * w_out, w, k, k)`` viewed as ``(G, w_out, w, k, k)``, ``d = w_out * k * k``)."""
    if member.grouped_input:
        count = sizes[member.group]
        blocks = count // tensor.shape[1]
        return tensor.unflatten(0, (blocks, -1)).movedim(2, 1).reshape(count, -1)
    start, length = member.span(sizes)
    return tensor.narrow(member.dim, start, length).movedim(member.dim, 0).reshape(sizes[member.group], -1)


def slice_norms(tensor: torch.Tensor, member: Member, sizes: Mapping[str, int], order: float = 2) -> torch.Tensor:
    """``(n,)`` float64: the ``order``-norm of each neuron's entries of ``tensor`` (the rows of :func:`neuron_slices`),
    reduced in place without copying the slices (a grouped convolution's input channels: from their slices)."""
    if member.grouped_input:
        return torch.linalg.vector_norm(neuron_slices(tensor, member, sizes), order, dim=1, dtype=torch.float64)
    start, length = member.span(sizes)
    count, dim = sizes[member.group], member.dim % tensor.dim()
    view = tensor.narrow(dim, start, length).unflatten(dim, (count, length // count))
    others = tuple(d for d in range(view.dim()) if d != dim)
    return torch.linalg.vector_norm(view, order, dim=others, dtype=torch.float64)


def channel_dim(module: nn.Module) -> int:
    """The dimension of a module's output that holds its channels: last for linear layers (tokens or channels-last
    maps before them), else 1."""
    return -1 if isinstance(module, nn.Linear) else 1


@dataclass(frozen=True)
class NeuronGroup:
    """The slices of a model that move together when neurons are permuted, transported, merged or pruned.

    For ``n = size`` neurons, every member ``p`` holds one slice per neuron along its dimension: neuron ``i`` owns
    ``W[i]`` of a producer (weight ``(out, in)`` or ``(out, in, k, k)``, bias and normalisation entries ``(out,)``) and
    ``W'[:, i]`` of a consumer (``repeat`` consecutive columns after a flatten). A permutation ``P`` of the neurons
    applied to every member at once leaves the network's function unchanged, ``f(x; P θ) = f(x; θ)``, because each
    consumer reads the neurons in the order its producers now write them; a transport map ``T: (n, m)`` replaces ``P``
    when neurons are merged (:mod:`fusion.transport`).

    Attributes
    ----------
    name : str
        The group's name: its first producing layer (``"features.0"``), or ``"<attention>.q"`` / ``"<attention>.v"``.
    size : int
        ``n``, the number of neurons (channels) as traced.
    producers : tuple[Member, ...]
        Slices along the output side: weight rows, biases, normalisation parameters and statistics, bare per-channel
        parameters.
    consumers : tuple[Member, ...]
        Slices along the input side of the next layers.
    layers : tuple[str, ...]
        The conv/linear modules among the producers, in execution order.
    chains : tuple[tuple[str, str], ...]
        For each of those layers, the module whose output carries the group's neurons: the BatchNorm directly
        following the layer, or the layer itself.
    normalized : tuple[str, ...]
        The LayerNorms that normalise over the group's neurons.
    blocks : int
        The number of equal consecutive blocks that every map must keep whole (1: free neurons): an attention's heads,
        or the convolution groups of a grouped convolution that writes or reads the group. A map may permute the
        blocks and the neurons inside each block, never move a neuron to another block alone (:mod:`fusion.blocks`).
    tie : str
        The groups with one ``tie`` share one assignment of blocks: an attention's query/key and value groups (the
        attention's name), or the input and output groups of grouped convolutions (the first such convolution's
        name); empty for free neurons.
    attention : str
        The attention module whose groups share one assignment of heads (:mod:`fusion.heads`); empty otherwise.
    maps : {"permutation", "orthogonal"}
        The largest kind of map that keeps the function: permutations (every group), or orthogonal maps keeping the
        all-ones direction (a LayerNorm'd residual stream once the LayerNorm gains are folded into its readers,
        :func:`fusion.layernorm.orthogonal_groups`).

    References
    ----------
    Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023: the dependency graph the groups come from.
    Xie et al., "Aggregated Residual Transformations for Deep Neural Networks" (ResNeXt), CVPR 2017, and Radosavovic
    et al., "Designing Network Design Spaces" (RegNet), CVPR 2020: the grouped convolutions behind ``blocks``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import neuron_groups
    >>> from fusion.surgery import permuted
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    >>> (group,) = neuron_groups(model, torch.zeros(1, 4))
    >>> group.name, group.size, group.layers, group.chains
    ('0', 8, ('0',), (('0', '1'),))
    >>> [member.key for member in group.producers]
    ['0.weight', '0.bias', '1.weight', '1.bias', '1.running_mean', '1.running_var']
    >>> [(member.key, member.dim) for member in group.consumers]
    [('3.weight', 1)]

    Shuffling the group's neurons in every member at once keeps the function:

    >>> shuffled = permuted(model, [group], seed=1)
    >>> x = torch.randn(5, 4)
    >>> torch.equal(shuffled[0].weight, model[0].weight), torch.allclose(shuffled(x), model(x), atol=1e-6)
    (False, True)
    """

    name: str
    size: int
    producers: tuple[Member, ...]
    consumers: tuple[Member, ...]
    layers: tuple[str, ...]
    chains: tuple[tuple[str, str], ...]
    normalized: tuple[str, ...] = ()
    blocks: int = 1
    tie: str = ""
    attention: str = ""
    maps: Literal["permutation", "orthogonal"] = "permutation"

    def members(self) -> tuple[Member, ...]:
        return self.producers + self.consumers

    @property
    def heads(self) -> int:
        """The attention heads of an attention group, else 1."""
        return self.blocks if self.attention else 1

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

    A group (:class:`NeuronGroup`) is the set of parameter slices that share one neuron index ``i``: row ``i`` of
    every layer that writes the neurons (with its bias and the BatchNorm entries after it) and column ``i`` of every
    layer that reads them. Layers tied by a residual addition share their neurons and so belong to one group. The
    groups partition every hidden dimension of the network, so any permutation ``P_g`` per group ``g`` gives a network
    computing the same function, and fusion methods work on groups alone.

    Parameters
    ----------
    model : nn.Module
        Any network torch-pruning can trace, made of linear and (grouped) conv layers, BatchNorm, LayerNorm over
        channels, per-channel parameters, activations, pooling, flatten, residual additions, gating products,
        concatenations and attention with separate ``q``, ``k``, ``v`` and ``proj`` layers. Traced in eval mode, its
        own mode restored after; not modified.
    example_inputs : torch.Tensor
        A batch of inputs ``(N, ...)`` on the model's device; only the first example's shape matters.

    Returns
    -------
    list[NeuronGroup]
        One group per set of tied neurons, ordered by the execution of its first layer. The network's inputs and its
        output logits belong to no group.

    Raises
    ------
    UnsupportedArchitecture
        For layers that cannot be sliced: grouped convolutions reading the network's input, writing its output,
        reading a concatenation or cutting one group into blocks of two sizes, layers with parameters of unknown role,
        a layer whose outputs are split between groups, a model that cannot be traced.

    References
    ----------
    Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023 (torch-pruning's dependency graph, imported on
    the first call). Singh & Jaggi, "Model Fusion via Optimal Transport", NeurIPS 2020 (aligning networks neuron group
    by neuron group).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import neuron_groups
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> groups = neuron_groups(model, torch.zeros(1, 4))
    >>> [(group.name, group.size) for group in groups]
    [('0', 8), ('2', 8)]
    >>> [m.key for m in groups[0].producers], [m.key for m in groups[0].consumers]
    (['0.weight', '0.bias'], ['2.weight'])

    A residual addition ties the neurons of the layers it adds into one group:

    >>> class Residual(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.stem, self.block, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)
    ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
    ...         h = self.stem(x)
    ...         return self.head(h + self.block(torch.relu(h)))
    >>> [(group.name, group.layers) for group in neuron_groups(Residual(), torch.zeros(1, 4))]
    [('stem', ('stem', 'block'))]
    """
    import torch_pruning as tp  # imports timm and torchvision: paid for by the first call, not by ``import fusion``

    attention = attention_modules(model)
    was_training = model.training
    model.eval()
    try:
        names = {module: name for name, module in model.named_modules()}
        parameters = {id(param): name for name, param in model.named_parameters()}
        example_inputs = example_inputs[:1]
        try:
            order, fixed = trace_order(model, example_inputs)
            with warnings.catch_warnings(), torch.enable_grad():
                warnings.filterwarnings("ignore", "Unwrapped parameters", UserWarning)
                graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
            found = list(graph.get_all_groups(ignored_layers=fixed))
        except UnsupportedArchitecture:
            raise
        except Exception as exc:
            raise UnsupportedArchitecture(
                f"the model could not be traced on an input of shape {tuple(example_inputs.shape)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        described = [describe(graph, group, names, parameters, order) for group in found]
    finally:
        model.train(was_training)
    modules = dict(model.named_modules())
    rank = {name: order.get(module, 0) for name, module in modules.items()}
    groups = split_attention(tie_convolution_groups(place(described, model.state_dict()), rank), attention)
    return sorted(groups, key=lambda g: rank[g.layers[0]])


def place(described: list[tuple[NeuronGroup, list[int]]], state: dict[str, torch.Tensor]) -> list[NeuronGroup]:
    """Name every member's group and the groups before and after it along its dimension (from the traced offsets);
    check that the members of every tensor dimension tile it exactly and that every layer writes one group."""
    sizes = {group.name: group.size for group, _ in described}
    tiles: dict[tuple[str, int], list[tuple[int, str, Member]]] = {}
    for group, offsets in described:
        for member, offset in zip(group.members(), offsets):
            tiles.setdefault((member.key, member.dim), []).append((offset, group.name, member))
    neighbours: dict[tuple[str, int, int], dict[str, tuple[tuple[str, int], ...]]] = {}
    for (key, dim), tiled in tiles.items():
        tiled.sort(key=lambda t: t[0])
        if any(member.grouped_input for _, _, member in tiled):
            if len(tiled) > 1:
                raise UnsupportedArchitecture(
                    f"{key}: a grouped convolution reading several neuron groups (a concatenation) is not supported"
                )
            neighbours[(key, dim, tiled[0][0])] = {"before": (), "after": ()}
            continue
        sequence = [(name, member.repeat) for _, name, member in tiled]
        position = 0
        for index, (offset, name, member) in enumerate(tiled):
            if offset != position:
                holder = "two groups" if offset < position else "no group"
                raise UnsupportedArchitecture(
                    f"{key}: entries {position}..{offset - 1} of dim {dim} belong to {holder}"
                )
            neighbours[(key, dim, offset)] = {"before": tuple(sequence[:index]), "after": tuple(sequence[index + 1 :])}
            position += sizes[name] * member.repeat
        if position < state[key].shape[dim]:
            raise UnsupportedArchitecture(
                f"{key}: only {position} of the {state[key].shape[dim]} entries of dim {dim} belong to neuron groups"
            )
        if position > state[key].shape[dim]:
            raise UnsupportedArchitecture(
                f"{key}: the traced neuron groups claim {position} entries of dim {dim}, which has "
                f"{state[key].shape[dim]} (a layer whose outputs are split and rearranged, such as a fused "
                "query/key/value projection, cannot be sliced)"
            )
    placed = []
    for group, offsets in described:
        members = [
            dataclasses.replace(m, group=group.name, **neighbours[(m.key, m.dim, o)])
            for m, o in zip(group.members(), offsets)
        ]
        producers, consumers = members[: len(group.producers)], members[len(group.producers) :]
        for member in producers:
            if member.module in group.layers and (member.before or member.after):
                raise UnsupportedArchitecture(f"{member.module}: its outputs are split between neuron groups")
        placed.append(dataclasses.replace(group, producers=tuple(producers), consumers=tuple(consumers)))
    return placed


def describe(
    graph: tp.DependencyGraph,
    group: tp.Group,
    names: dict[nn.Module, str],
    parameters: dict[int, str],
    order: dict[nn.Module, int],
) -> tuple[NeuronGroup, list[int]]:
    """One torch-pruning group as a :class:`NeuronGroup` (members not yet placed) and each member's traced offset."""
    size = len(group.items[0].idxs)
    producers: list[tuple[Member, int]] = []
    consumers: list[tuple[Member, int]] = []
    producer_modules: list[nn.Module] = []
    full: set[nn.Module] = set()
    normalized: list[str] = []
    for item in group.items:
        module = item.dep.target.module
        out_side = graph.is_out_channel_pruning_fn(item.dep.handler)
        if isinstance(module, nn.Parameter):
            producers.append((parameter_member(module, parameters.get(id(module)), len(item.idxs)), 0))
            continue
        if not isinstance(module, (*LAYERS, *CHANNEL_NORMS)):
            if any(True for _ in module.parameters(recurse=False)):
                raise UnsupportedArchitecture(
                    f"{names.get(module, module)}: layers of type {type(module).__name__} are not supported"
                )
            continue
        name = names[module]
        offset, repeat = slice_layout(item.idxs, item.root_idxs, size, name)
        if isinstance(module, LAYERS):
            rows, columns = grouped_widths(module)
            if out_side:
                producers.append((Member(name, "weight", 0, repeat, block_width=rows), offset))
                if module.bias is not None:
                    producers.append((Member(name, "bias", 0, repeat), offset))
                producer_modules.append(module)
            elif not module_is_depthwise(module):
                consumers.append((Member(name, "weight", 1, repeat, block_width=columns), offset))
        else:
            if isinstance(module, nn.LayerNorm):
                check_layer_norm(module, name)
                normalized.append(name)
            for param in ("weight", "bias"):
                if getattr(module, param, None) is not None:
                    producers.append((Member(name, param, 0, repeat), offset))
            if getattr(module, "running_mean", None) is not None:
                producers += [(Member(name, "running_mean", 0, repeat), offset)]
                producers += [(Member(name, "running_var", 0, repeat), offset)]
            producer_modules.append(module)
        if offset == 0 and len(item.idxs) == size * repeat:
            full.add(module)
    layers = sorted((m for m in producer_modules if isinstance(m, LAYERS)), key=lambda m: order.get(m, 0))
    if not layers:
        raise UnsupportedArchitecture("a neuron group without a producing linear or conv layer")
    described = NeuronGroup(
        name=names[layers[0]],
        size=size,
        producers=tuple(m for m, _ in producers),
        consumers=tuple(m for m, _ in consumers),
        layers=tuple(names[m] for m in layers),
        chains=tuple((names[layer], names[end]) for layer, end in chains(producer_modules, full, order)),
        normalized=tuple(normalized),
    )
    return described, [o for _, o in producers] + [o for _, o in consumers]


def module_is_depthwise(module: nn.Module) -> bool:
    """Whether a conv is depthwise (one input channel per output channel): its rows join its input's group."""
    groups = getattr(module, "groups", 1)
    return groups > 1 and groups == module.in_channels == module.out_channels


def grouped_widths(module: nn.Module) -> tuple[int, int]:
    """``(out / G, in / G)``, the output and input channels of one convolution group, for a grouped convolution with
    ``G`` groups that is not depthwise; ``(0, 0)`` for any other layer."""
    groups = getattr(module, "groups", 1)
    if groups == 1 or module_is_depthwise(module):
        return 0, 0
    return module.out_channels // groups, module.in_channels // groups


def tie_convolution_groups(groups: list[NeuronGroup], rank: Mapping[str, int]) -> list[NeuronGroup]:
    """``groups`` with the input and output groups of every grouped convolution given its ``G`` blocks and one tie.

    A convolution with ``G`` groups computes output block ``g`` from input block ``g`` alone,
    ``y_g = W_g * x_g``. Permutations ``P_in`` of its input channels and ``P_out`` of its output channels keep the
    function exactly when both are block-structured with one permutation ``s`` of the blocks,
    ``P(g * w + j) = s(g) * w + p_g(j)`` (any permutation ``p_g`` inside each block, for each side): output block
    ``s(g)`` must again read the input block ``s(g)``. So both groups carry ``blocks = G``, and all groups linked by
    grouped convolutions share one tie, named after the first such convolution (``rank``: execution order). A group
    that two grouped convolutions would cut into different numbers of blocks, and a grouped convolution reading the
    network's input or writing its output (whose blocks could not move), are refused by name.
    """
    reads = {m.module: g for g in groups for m in g.consumers if m.grouped_input}
    writes = {m.module: (g, m) for g in groups for m in g.producers if m.block_width and m.dim == 0}
    convolutions = sorted(set(reads) | set(writes), key=lambda name: rank[name])
    if not convolutions:
        return groups
    parent = {g.name: g.name for g in groups}

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    blocks: dict[str, int] = {}
    ties: dict[str, str] = {}
    for conv in convolutions:
        if conv not in reads or conv not in writes:
            side = "reads the network's input" if conv not in reads else "writes the network's output"
            raise UnsupportedArchitecture(
                f"{conv}: a grouped convolution that {side} is not supported (its convolution groups could not move)"
            )
        written, rows = writes[conv]
        count = written.size // rows.block_width
        for group in (reads[conv], written):
            if blocks.setdefault(group.name, count) != count:
                raise UnsupportedArchitecture(
                    f"{conv}: its {count} convolution groups cut group {group.name}, which another grouped "
                    f"convolution cuts into {blocks[group.name]}; its channels cannot be kept in both kinds of blocks"
                )
        first, second = root(reads[conv].name), root(written.name)
        named = [ties.pop(r) for r in {first, second} if r in ties]
        parent[second] = first
        ties[first] = min(named, key=lambda name: rank[name]) if named else conv
    return [
        dataclasses.replace(g, blocks=blocks[g.name], tie=ties[root(g.name)]) if g.name in blocks else g for g in groups
    ]


def check_layer_norm(module: nn.LayerNorm, name: str) -> None:
    if len(module.normalized_shape) != 1 or module.weight is None:
        raise UnsupportedArchitecture(
            f"{name}: only LayerNorms over the channel dimension with affine parameters are supported"
        )


def parameter_member(parameter: nn.Parameter, name: str | None, count: int) -> Member:
    """A bare parameter used in the forward pass (a layer scale, a class token): its neuron dimension is its last
    dimension longer than one (torch-pruning's convention), which must hold one entry per neuron."""
    if name is None:
        raise UnsupportedArchitecture("a parameter outside the model's modules is used in the forward pass")
    dims = [d for d, length in enumerate(parameter.shape) if length > 1]
    if not dims or parameter.shape[dims[-1]] != count:
        raise UnsupportedArchitecture(f"{name}: parameter of shape {tuple(parameter.shape)} has no channel dimension")
    module, _, param = name.rpartition(".")
    return Member(module, param, dims[-1])


def chains(
    modules: list[nn.Module], full: set[nn.Module], order: dict[nn.Module, int]
) -> list[tuple[nn.Module, nn.Module]]:
    """Each conv/linear producer with the BatchNorm that directly follows it in execution order and normalises exactly
    its outputs, else with itself."""
    pairs = []
    ranked = sorted(modules, key=lambda m: order.get(m, 0))
    for index, module in enumerate(ranked):
        if isinstance(module, LAYERS):
            following = ranked[index + 1] if index + 1 < len(ranked) else None
            chained = (
                isinstance(following, NORMS)
                and following in full
                and order.get(following, 0) == order.get(module, 0) + 1
            )
            pairs.append((module, following if chained else module))
    return pairs


def slice_layout(idxs: list[int], root_idxs: list[int], size: int, name: str) -> tuple[int, int]:
    """``(offset, repeat)``: where this member's entries start along its dimension, and how many consecutive entries
    each neuron owns (``H*W`` after a flatten, else 1)."""
    if len(idxs) % size:
        raise UnsupportedArchitecture(f"{name}: {len(idxs)} entries cannot be split among {size} neurons")
    repeat = len(idxs) // size
    mapping = sorted(zip(idxs, root_idxs))
    offset = mapping[0][0]
    if [i for i, _ in mapping] != list(range(offset, offset + len(idxs))) or [r for _, r in mapping] != [
        i // repeat for i in range(len(idxs))
    ]:
        raise UnsupportedArchitecture(f"{name}: its channels map to interleaved slices of a neuron group")
    return offset, repeat


def attention_modules(model: nn.Module) -> dict[str, int]:
    """The attention modules of ``model`` by name, with their head counts: modules with a ``num_heads`` attribute and
    separate linear ``q``, ``k``, ``v`` and ``proj`` layers. Fused projections (``nn.MultiheadAttention``, a linear
    ``qkv``) that :mod:`fusion.attention_layouts` has not split are refused by name; other modules that merely
    record a head count (a transformer block) are not attention."""
    found = {}
    for name, module in model.named_modules():
        heads = getattr(module, "num_heads", None)
        if not isinstance(heads, int):
            continue
        if isinstance(module, nn.MultiheadAttention) or isinstance(getattr(module, "qkv", None), nn.Linear):
            raise UnsupportedArchitecture(
                f"{name}: attention of type {type(module).__name__} (fused query/key/value projections) is not "
                "supported in this form; FusionLab aligns attention with separate linear q, k, v and proj layers "
                "(the zoo's vit, or torchvision's and timm's ViT attention once split)"
            )
        if all(isinstance(getattr(module, part, None), nn.Linear) for part in PROJECTIONS):
            found[name] = heads
    return found


def split_attention(groups: list[NeuronGroup], attention: dict[str, int]) -> list[NeuronGroup]:
    """``groups`` with the traced group of each module of ``attention`` (:func:`attention_modules`) replaced by its
    query/key group and its value group (why these keep the function: :mod:`fusion.heads`); the other groups
    unchanged."""
    if not attention:
        return groups
    result = []
    for group in groups:
        name = next((a for a in attention if group.layers[0] in (f"{a}.{p}" for p in PROJECTIONS)), None)
        if name is None:
            result.append(group)
            continue
        result.extend(split_group(group, name, attention[name]))
    return result


def split_group(group: NeuronGroup, name: str, heads: int) -> tuple[NeuronGroup, NeuronGroup]:
    q, k, v, proj = (f"{name}.{part}" for part in PROJECTIONS)
    modules = {m.module for m in group.producers}
    if modules != {q, k, v} or {m.module for m in group.consumers} != {proj}:
        raise UnsupportedArchitecture(
            f"{name}: the neurons of its q, k and v projections are shared with other layers "
            f"({', '.join(sorted(modules - {q, k, v}))}), so its heads cannot be aligned"
        )
    if group.size % heads:
        raise UnsupportedArchitecture(f"{name}: {group.size} dimensions do not split into {heads} heads")

    def part(label: str, layers: tuple[str, ...], consumers: tuple) -> NeuronGroup:
        group_name = f"{name}.{label}"
        return NeuronGroup(
            name=group_name,
            size=group.size,
            producers=tuple(dataclasses.replace(m, group=group_name) for m in group.producers if m.module in layers),
            consumers=tuple(dataclasses.replace(m, group=group_name) for m in consumers),
            layers=layers,
            chains=tuple((layer, layer) for layer in layers),
            blocks=heads,
            tie=name,
            attention=name,
        )

    return part("q", (q, k), ()), part("v", (v,), group.consumers)


def groups_by_module(groups: list[NeuronGroup]) -> tuple[dict[str, NeuronGroup], dict[str, tuple[Member, ...]]]:
    """``(writes, reads)``: the group a conv/linear module writes, and the consumer members through which it reads
    groups (several after a concatenation), in order along its input dimension.

    Modules reading the network input, or writing the logits, are absent from the respective mapping.
    """
    writes: dict[str, NeuronGroup] = {}
    reads: dict[str, list[Member]] = {}
    for group in groups:
        for member in group.producers:
            if member.param == "weight" and member.module in group.layers:
                writes[member.module] = group
        for member in group.consumers:
            reads.setdefault(member.module, []).append(member)
    return writes, {name: tuple(sorted(members, key=lambda m: len(m.before))) for name, members in reads.items()}
