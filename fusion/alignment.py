"""Align one network to another, neuron group by neuron group.

For every group of the model being aligned (A) and the reference (B) a transport map is computed from neuron features
and applied to all the group's members at once (:func:`fusion.surgery.apply_transports`), so a hard assignment yields
a model that computes exactly the same function as A with its neurons in B's order.

Features (``AlignOptions.mode``):

- ``weights`` (Singh & Jaggi 2020, Sec. 4): neuron i of A is the concatenation of its incoming rows over every producer
  of the group (weights, biases, BatchNorm parameters), after its input side has been aligned with the map of the group
  it reads: ``W_A T_in`` (per kernel position for convs, per spatial position after a flatten). Groups are processed in
  the order the network computes them; a residual group whose inputs are not yet aligned uses them unaligned in the
  first sweep, and further sweeps re-solve every group with all others' latest maps (skipping a group when none of
  the maps its features depend on has changed since it was last solved: it would get the same map). With
  ``features="both"`` the
  outgoing columns of the consumers (their outputs aligned) join the feature: with the squared Euclidean cost and an
  exact solver this is Git Re-Basin's weight matching (Ainsworth et al., ICLR 2023), iterated to a fixed point.
- ``activations``: neuron i is its activation map at the group's outputs (after BatchNorm when there is one) over a
  fixed, seeded sample of training inputs, computed in eval mode in batches; no input alignment is needed.

Groups with blocks (:mod:`fusion.blocks`) get block-structured maps. An attention's groups are solved together (one
head assignment from their summed costs, :mod:`fusion.heads`). The groups tied by grouped convolutions (ResNeXt,
RegNet) are solved in the network's order: the first group of a tie chooses the assignment of convolution groups from
its own costs, and the later ones, whose incoming weights are only comparable once the first has aligned their
inputs, keep it and match their channels inside the matched blocks. A grouped convolution's weights enter the
features with the other side's map applied within blocks (:func:`fusion.blocks.within_blocks`): each convolution
group's rows (or columns) are compared with the reference's matched group's, in their grouped layout.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from fusion.blocks import block_order, block_transports, within_blocks
from fusion.distributed import shard, world_size
from fusion.errors import ArchitectureError, ConfigError, FusionError
from fusion.groups import Member, NeuronGroup, channel_dim, groups_by_module, neuron_slices
from fusion.heads import head_transports
from fusion.problems import Checks
from fusion.procrustes import head_rotations, orthogonal_procrustes
from fusion.progress import Progress, no_progress
from fusion.surgery import apply_transports, group_sizes, mapped_tensors, transform, with_state
from fusion.train import predict_logits
from fusion.transport import Gram, Transport, TransportOptions, solve_transport


class AlignmentError(FusionError):
    """An alignment that must preserve the function does not: names the group at fault."""


@dataclass(frozen=True)
class AlignOptions(TransportOptions):
    """How neurons are compared (``mode``, ``features``) and matched (:class:`fusion.transport.TransportOptions`).

    Neuron ``i`` of a group is a feature vector ``a_i``: its incoming weights with their inputs already aligned,
    ``[W_A T_in]_i`` (``mode="weights"``; with ``features="both"`` also its outgoing columns), or its activations on
    ``samples`` training inputs drawn with ``seed`` (``mode="activations"``). The map solves the transport problem of
    :func:`fusion.transport.transport_plan` on the ground cost ``C_ij = d(a_i, b_j)`` (``solver``, ``reg``,
    ``metric``, ``normalize_rows``, ``cost_normalization``, ``marginals``, ``correction``, from
    :class:`~fusion.transport.TransportOptions`). Defaults follow otfusion's published weights-mode configuration
    (exact OT, Euclidean not squared, uniform marginals, no normalisation); weight matching (Git Re-Basin) is
    ``features="both", metric="sqeuclidean", sweeps=100``. Every field is checked on construction: a refused value
    raises :class:`~fusion.errors.ConfigError` naming it.

    Attributes
    ----------
    mode : {"weights", "activations"}
        Compare neurons by incoming weights or by activations on training samples.
    features : {"incoming", "both"}
        Incoming weights only (OT fusion), or incoming and outgoing (weight matching).
    sweeps : int
        Passes over all groups, 1 to 1000; later passes use every group's latest map and stop at a fixed point.
    samples : int
        Training samples for activation features.
    seed : int
        Seed of the activation sample.
    orthogonal : bool
        Groups with ``maps="orthogonal"`` (:attr:`fusion.groups.NeuronGroup.maps`) get the orthogonal map keeping
        ``1`` that best aligns their features (:func:`fusion.procrustes.orthogonal_procrustes`; in activations mode
        the residual stream itself, normalised, at the input of every LayerNorm over it), and attention groups an
        orthogonal map per matched pair of heads (:func:`fusion.procrustes.head_rotations`).

    References
    ----------
    Singh & Jaggi, "Model Fusion via Optimal Transport", NeurIPS 2020 (otfusion). Ainsworth et al., "Git Re-Basin:
    Merging Models modulo Permutation Symmetries", ICLR 2023 (weight matching). Theus et al., "Generalized Linear
    Mode Connectivity for Transformers", NeurIPS 2025 (orthogonal maps of the residual stream).

    Examples
    --------
    >>> from fusion import AlignOptions, ConfigError
    >>> options = AlignOptions()
    >>> options.mode, options.solver, options.metric, options.sweeps
    ('weights', 'exact', 'euclidean', 1)
    >>> AlignOptions(features="both", metric="sqeuclidean", sweeps=100).features
    'both'
    >>> try:
    ...     AlignOptions(sweeps=0)
    ... except ConfigError as refused:
    ...     print(refused)
    sweeps must be a whole number from 1 to 1000, got 0
    """

    mode: Literal["weights", "activations"] = field(
        default="weights",
        metadata={"help": "compare neurons by incoming weights or by activations on training samples"},
    )
    features: Literal["incoming", "both"] = field(
        default="incoming",
        metadata={"help": "incoming weights only (OT fusion) or incoming and outgoing (weight matching)"},
    )
    sweeps: int = field(
        default=1, metadata={"help": "passes over all groups; later passes use every group's latest map"}
    )
    samples: int = field(default=200, metadata={"help": "training samples for activation features"})
    seed: int = field(default=0, metadata={"help": "seed of the activation sample"})
    orthogonal: bool = field(
        default=False,
        metadata={
            "help": (
                "align the groups that admit orthogonal maps (a LayerNorm'd residual stream, gains folded) by "
                "orthogonal Procrustes instead of a permutation"
            )
        },
    )

    def check(self, checks: Checks) -> None:
        checks.whole("sweeps", self.sweeps, 1, 1000)
        checks.whole("samples", self.samples, 1, 100_000)
        super().check(checks)
        checks.seed("seed", self.seed)


@dataclass(frozen=True, eq=False)
class Alignment:
    """How ``source`` was aligned to a reference: the map of every group, and the aligned network on demand.

    The aligned parameters are ``source_state`` with every group's map applied to its members
    (:func:`fusion.surgery.apply_transports`): row ``j`` of a producer becomes ``sum_i P_ij W_i``, column ``j`` of a
    consumer ``sum_i Q_ij V_{:, i}`` (:class:`~fusion.transport.Transport`). They are computed when asked:
    :meth:`tensors` one by one, :attr:`state` and :attr:`model` (the aligned network, holding the tensors of ``state``)
    on first use, so an alignment used only for a streamed average never holds a second copy of the network.

    Attributes
    ----------
    source : nn.Module
        The model that was aligned (not modified).
    source_state : dict[str, torch.Tensor]
        Its state_dict, detached, on the alignment's device.
    groups : list[NeuronGroup]
        The neuron groups the maps act on.
    transports : dict[str, Transport]
        The map of every group, by group name: ``(n, m)`` from the source's ``n`` neurons to the reference's ``m``.
    costs : dict[str, float]
        ``<T, C>`` of every group's map.
    seconds : dict[str, float]
        Time spent solving each group's map, summed over sweeps.
    sweeps : int
        The sweeps run (fewer than asked when a sweep changed no map).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import align, neuron_groups
    >>> _ = torch.manual_seed(0)
    >>> reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> alignment = align(model, reference, neuron_groups(reference, torch.zeros(1, 4)))
    >>> sorted(alignment.transports), alignment.transports["0"].shape, alignment.sweeps
    (['0'], (8, 8), 1)
    >>> x = torch.randn(5, 4)
    >>> torch.allclose(alignment.model(x), model(x), atol=1e-6)  # a permutation keeps the function
    True
    """

    source: nn.Module
    source_state: dict[str, torch.Tensor]
    groups: list[NeuronGroup]
    transports: dict[str, Transport]
    costs: dict[str, float]
    seconds: dict[str, float]
    sweeps: int

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The aligned parameters, one entry at a time (:func:`fusion.surgery.mapped_tensors`)."""
        return mapped_tensors(self.source_state, self.groups, self.transports)

    @functools.cached_property
    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors())

    @functools.cached_property
    def model(self) -> nn.Module:
        return with_state(self.source, self.state, share=True)


class FeatureBuilder:
    """Neuron features in weights mode for a pair of state_dicts (see the module docstring), as the products of
    their blocks (:class:`fusion.transport.Gram`). Blocks are summed by the groups whose maps they depend on, and
    such a sum is recomputed only when one of those maps has changed since (``versions``); with ``keep`` false
    (a single sweep) nothing is kept."""

    def __init__(
        self,
        groups: list[NeuronGroup],
        features: str,
        sizes_a: dict[str, int],
        sizes_b: dict[str, int],
        keep: bool = True,
    ) -> None:
        self.features, self.keep = features, keep
        self.sizes_a, self.sizes_b = sizes_a, sizes_b
        self.writes, self.reads = groups_by_module(groups)
        self.blocks = {group.name: self.dependencies(group) for group in groups}
        self.cache: dict[tuple[str, tuple[str, ...]], tuple[tuple[int, ...], Gram | None]] = {}

    def dependencies(self, group: NeuronGroup) -> dict[tuple[str, ...], list[tuple[str, Member]]]:
        """The group's feature blocks (``("in", producer)`` and ``("out", consumer)``) by the groups they depend on:
        those a producer reads, and the one a consumer writes."""
        blocks: dict[tuple[str, ...], list[tuple[str, Member]]] = {}
        for member in group.producers:
            if member.param in ("running_mean", "running_var"):
                continue
            reads = self.reads.get(member.module, ()) if member.param == "weight" else ()
            blocks.setdefault(tuple(sorted({read.group for read in reads})), []).append(("in", member))
        if self.features == "both":
            for member in group.consumers:
                written = self.writes.get(member.module)
                blocks.setdefault((written.name,) if written else (), []).append(("out", member))
        return blocks

    def depends(self, group: NeuronGroup) -> set[str]:
        """The groups whose maps enter this group's features; a group is solved again only when one has changed."""
        return {name for names in self.blocks[group.name] for name in names}

    def gram(
        self,
        group: NeuronGroup,
        state_a: dict[str, torch.Tensor],
        state_b: dict[str, torch.Tensor],
        transports: dict[str, Transport],
        versions: dict[str, int],
    ) -> Gram:
        """The products of A's features (input side aligned with ``transports``) with B's."""
        total = None
        for names, blocks in self.blocks[group.name].items():
            stamp = tuple(versions.get(name, 0) for name in names)
            cached = self.cache.get((group.name, names))
            if cached is None or cached[0] != stamp:
                summed = None
                for side, member in blocks:
                    if side == "in":
                        a = self.incoming(state_a, member, transports, self.sizes_a)
                        if a is None:
                            continue
                        b = self.incoming(state_b, member, None, self.sizes_b)
                    else:
                        a = self.outgoing(state_a, member, transports, self.sizes_a)
                        b = self.outgoing(state_b, member, None, self.sizes_b)
                    part = Gram.of(a, b)
                    summed = part if summed is None else summed + part
                cached = (stamp, summed)
                if self.keep:
                    self.cache[(group.name, names)] = cached
            if cached[1] is not None:
                total = cached[1] if total is None else total + cached[1]
        return total

    def incoming(
        self,
        state: dict[str, torch.Tensor],
        member: Member,
        transports: dict[str, Transport] | None,
        sizes: dict[str, int],
    ) -> torch.Tensor | None:
        """The member's rows with their input side aligned; ``None`` when the map of a group it reads is not known
        yet and the two models' widths there differ (the rows cannot be compared then)."""
        tensor = state[member.key]
        inputs = self.reads.get(member.module, ()) if member.param == "weight" else ()
        if transports is not None and inputs:
            current = dict(sizes)
            for read in inputs:
                if read.group in transports:
                    transport = transports[read.group]
                    if read.block_width:
                        transport = within_blocks(transport, read.block_width)
                    tensor = transform(tensor, read, transport, "consumer", current)
                    current[read.group] = transports[read.group].shape[1]
                elif self.sizes_a[read.group] != self.sizes_b[read.group]:
                    return None
        return neuron_slices(tensor, member, sizes)

    def outgoing(
        self,
        state: dict[str, torch.Tensor],
        member: Member,
        transports: dict[str, Transport] | None,
        sizes: dict[str, int],
    ) -> torch.Tensor:
        tensor = state[member.key]
        target = self.writes.get(member.module)
        if transports is not None and target is not None and target.name in transports:
            written = next(m for m in target.producers if m.key == member.key)
            transport = transports[target.name]
            if written.block_width:
                transport = within_blocks(transport, written.block_width)
            tensor = transform(tensor, written, transport, "producer", sizes)
        return neuron_slices(tensor, member, sizes)


@torch.no_grad()
def activation_features(
    model: nn.Module,
    groups: list[NeuronGroup],
    inputs: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    streams: frozenset[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Per group, ``(neurons, samples * positions)``: the activations at the group's outputs, eval mode, batched;
    for the groups named in ``streams``, the residual stream at the input of every LayerNorm over the group (at every
    block boundary), centred and scaled to unit norm per token, ``(x - mean(x) 1) / |x - mean(x) 1|``, so that every
    boundary weighs alike however the stream grows with depth."""
    modules = dict(model.named_modules())
    outputs = {group.name: group.normalized if group.name in streams else group.outputs for group in groups}
    wanted = {name for group in groups if group.name not in streams for name in group.outputs}
    norms = {name for group in groups if group.name in streams for name in group.normalized}
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in wanted | norms}

    def hook(name: str):
        def record(module: nn.Module, args: object, output: torch.Tensor) -> None:
            channels = output.detach().movedim(channel_dim(module), 0)
            collected[name].append(channels.reshape(len(channels), -1).float().cpu())

        return record

    def stream(name: str):
        def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            centred = args[0].detach() - args[0].detach().mean(-1, keepdim=True)
            centred = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            collected[name].append(centred.movedim(-1, 0).reshape(centred.shape[-1], -1).float().cpu())

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in wanted]
    handles += [modules[name].register_forward_pre_hook(stream(name)) for name in norms]
    was_training = model.training
    model.eval().to(device)
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    per_module = {name: torch.cat(chunks, 1) for name, chunks in collected.items()}
    return {group.name: torch.cat([per_module[name] for name in outputs[group.name]], 1) for group in groups}


def align(
    model: nn.Module,
    reference: nn.Module,
    groups: list[NeuronGroup],
    options: AlignOptions = AlignOptions(),
    inputs: torch.Tensor | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> Alignment:
    """Transport ``model``'s neurons onto ``reference``'s, group by group; returns the maps and the aligned copy.

    For every group ``g``, in the order the network computes them, the map is the optimal transport plan
    (:func:`fusion.transport.transport_plan`)

    .. math::

        T_g = \\arg\\min_{T \\ge 0,\\ T 1 = \\mu,\\ T^\\top 1 = \\nu} \\sum_{ij} T_{ij} \\, d(a_i, b_j)

    between the features ``a_i`` of ``model``'s neurons and ``b_j`` of ``reference``'s (:class:`AlignOptions`: incoming
    weights with their inputs aligned by the maps of the groups they read, ``a_i = [W_A T_in]_i``, or activations). A
    hard assignment gives a network computing exactly ``model``'s function with its neurons in ``reference``'s order.

    Parameters
    ----------
    model : nn.Module
        The network to align (A); not modified.
    reference : nn.Module
        The network to align to (B); same architecture and parameter names, widths may differ.
    groups : list[NeuronGroup]
        :func:`fusion.groups.neuron_groups` of either model.
    options : AlignOptions
        How neurons are compared and matched.
    inputs : torch.Tensor, optional
        ``(N, ...)`` training inputs, needed for ``mode="activations"``.
    device : torch.device, optional
        Where the features and costs are computed (the CPU when ``None``).
    progress : Progress
        Called with ``(done, total, message)`` after every group of every sweep.

    Returns
    -------
    Alignment
        The map of every group (``T_g: (n_g, m_g)``), its cost and time, and the aligned model on demand.

    Raises
    ------
    ArchitectureError
        When the models' parameter names differ, or their attention heads cannot be matched.
    ConfigError
        For ``mode="activations"`` without ``inputs``, or options a group cannot take.

    References
    ----------
    Singh & Jaggi, "Model Fusion via Optimal Transport", NeurIPS 2020, Sec. 4. Ainsworth et al., "Git Re-Basin", ICLR
    2023 (weight matching: ``features="both"``, iterated sweeps).

    Examples
    --------
    Aligning a copy of a network whose hidden neurons were shuffled gives back the network itself:

    >>> import torch
    >>> from torch import nn
    >>> from fusion import AlignOptions, align, neuron_groups
    >>> from fusion.surgery import permuted
    >>> _ = torch.manual_seed(0)
    >>> reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> groups = neuron_groups(reference, torch.zeros(1, 4))
    >>> shuffled = permuted(reference, groups, seed=1)
    >>> alignment = align(shuffled, reference, groups)
    >>> all(torch.equal(alignment.state[key], value) for key, value in reference.state_dict().items())
    True

    Weight matching between two independently initialised networks stops at a fixed point:

    >>> other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> matching = align(other, reference, groups, AlignOptions(features="both", metric="sqeuclidean", sweeps=100))
    >>> matching.sweeps
    4
    >>> x = torch.randn(16, 4)
    >>> torch.allclose(matching.model(x), other(x), atol=1e-6)
    True
    """
    device = device or torch.device("cpu")
    state_a = {k: v.detach().to(device) for k, v in model.state_dict().items()}
    state_b = {k: v.detach().to(device) for k, v in reference.state_dict().items()}
    if set(state_a) != set(state_b):
        raise ArchitectureError("the models do not share an architecture: their parameter names differ")
    sizes_a, sizes_b = group_sizes(state_a, groups), group_sizes(state_b, groups)
    check_heads(model, reference, groups, sizes_a, sizes_b)
    if options.mode == "activations":
        if inputs is None or len(inputs) == 0:
            raise ConfigError("activation-based alignment needs training inputs")
        share = inputs[shard(len(inputs))] if len(inputs) >= world_size() else inputs
        streams = frozenset(g.name for g in groups if rotated(g, options) and g.normalized)
        acts_a = activation_features(model, groups, share, device, streams=streams)
        acts_b = activation_features(reference, groups, share, device, streams=streams)
    builder = FeatureBuilder(groups, options.features, sizes_a, sizes_b, keep=options.sweeps > 1)
    transports: dict[str, Transport] = {}
    costs: dict[str, float] = {}
    seconds: dict[str, float] = {}
    sweeps = 1 if options.mode == "activations" else options.sweeps
    done_sweeps = 0
    versions: dict[str, int] = {}
    solved_at: dict[str, dict[str, int]] = {}
    partners = {g.name: [p for p in groups if p.attention == g.attention] if g.heads > 1 else [g] for g in groups}
    leaders: dict[str, NeuronGroup] = {}
    for group in groups:
        leaders.setdefault(group.tie, group)

    def gram_of(group: NeuronGroup) -> Gram:
        if options.mode == "activations":
            gram = Gram.of(acts_a[group.name].to(device), acts_b[group.name].to(device))
            return gram.summed_over_ranks() if len(inputs) >= world_size() else gram
        return builder.gram(group, state_a, state_b, transports, versions)

    def solve(group: NeuronGroup) -> list[Transport]:
        """The group's map, or, for an attention group, the maps of all its attention's groups at once; a later group
        of a convolution tie keeps the tie's first group's assignment of blocks."""
        if group.blocks > 1 and options.marginals != "uniform":
            what = "attention heads" if group.heads > 1 else "convolution groups"
            raise ConfigError(
                f"{group.tie}: {what} are aligned with uniform marginals, got marginals={options.marginals!r}"
            )
        if rotated(group, options):
            if group.heads > 1:
                return head_rotations([gram_of(p) for p in partners[group.name]], group.heads)
            return [orthogonal_procrustes(gram_of(group))]
        if group.heads > 1:
            return head_transports([gram_of(p) for p in partners[group.name]], group.heads, options)
        if group.blocks > 1:
            leader = leaders[group.tie]
            width = leader.size // leader.blocks
            order = None if leader is group else block_order(transports[leader.name], width)
            return block_transports([gram_of(group)], group.blocks, options, order)
        return [solve_transport(gram_of(group), options=options)]

    for sweep in range(sweeps):
        changed = False
        for index, group in enumerate(groups):
            step = (sweep * len(groups) + index + 1, sweeps * len(groups))
            inputs_at = {name: versions.get(name, 0) for name in builder.depends(group)}
            if solved_at.get(group.name) == inputs_at:
                progress(*step, f"sweep {sweep + 1}: group {group.name} unchanged")
                continue
            started = time.perf_counter()
            solved = solve(group)
            elapsed = (time.perf_counter() - started) / len(solved)
            for partner, transport in zip(partners[group.name], solved):
                previous = transports.get(partner.name)
                if previous is None or not np.array_equal(previous.plan, transport.plan):
                    changed = True
                    versions[partner.name] = versions.get(partner.name, 0) + 1
                transports[partner.name] = transport
                costs[partner.name] = transport.cost
                seconds[partner.name] = seconds.get(partner.name, 0.0) + elapsed
            for partner in partners[group.name]:
                depends = builder.depends(partner)
                solved_at[partner.name] = inputs_at if partner is group else {n: versions.get(n, 0) for n in depends}
            progress(*step, f"sweep {sweep + 1}: group {group.name}")
        done_sweeps = sweep + 1
        if not changed:
            break
    return Alignment(model, state_a, groups, transports, costs, seconds, done_sweeps)


def check_heads(
    model: nn.Module,
    reference: nn.Module,
    groups: list[NeuronGroup],
    sizes_a: dict[str, int],
    sizes_b: dict[str, int],
) -> None:
    """Heads are matched one to one and whole: an attention of ``model`` must have the reference's head count and
    width, else :class:`ArchitectureError` names it; so are convolution groups, in groups of one width."""
    for group in groups:
        if group.blocks > 1 and group.heads == 1 and sizes_a[group.name] != sizes_b[group.name]:
            raise ArchitectureError(
                f"{group.tie}: group {group.name} has {sizes_a[group.name]} channels against the reference's "
                f"{sizes_b[group.name]}; grouped convolutions are aligned between models of one width"
            )
        if group.heads > 1:
            heads = [m.get_submodule(group.attention).num_heads for m in (model, reference)]
            if heads[0] != heads[1] or sizes_a[group.name] != sizes_b[group.name]:
                raise ArchitectureError(
                    f"{group.attention}: {heads[0]} heads of {sizes_a[group.name] // heads[0]} dimensions against "
                    f"the reference's {heads[1]} of {sizes_b[group.name] // heads[1]}; attention is aligned between "
                    "models of one head count and width"
                )


def rotated(group: NeuronGroup, options: AlignOptions) -> bool:
    """Whether ``group`` gets an orthogonal map: it admits one and ``options.orthogonal`` asks for it."""
    return options.orthogonal and group.maps == "orthogonal"


def is_hard(transports: dict[str, Transport]) -> bool:
    """Whether every map keeps its model's function exactly (:attr:`fusion.transport.Transport.exact`)."""
    return all(t.exact for t in transports.values())


def verify_alignment(
    source: nn.Module,
    aligned: nn.Module,
    groups: list[NeuronGroup],
    transports: dict[str, Transport],
    probe: torch.Tensor,
    device: torch.device | None = None,
    tolerance: float = 1e-4,
) -> float:
    """Check that a hard alignment computes its source's function on ``probe``; returns the max |logit difference|.

    On a mismatch, each group's map is applied alone (with the maps of its tie, which only keep the function together)
    to find the group at fault, and :class:`AlignmentError` names it.
    """
    expected = predict_logits(source, probe, device)
    error = float((predict_logits(aligned, probe, device) - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if error <= tolerance * scale:
        return error
    state = {k: v.detach().cpu() for k, v in source.state_dict().items()}
    for group in groups:
        tied = {p.name: transports[p.name] for p in groups if p.name == group.name or (p.tie and p.tie == group.tie)}
        single = with_state(source, apply_transports(state, groups, tied))
        if float((predict_logits(single, probe, device) - expected).abs().max()) > tolerance * scale:
            raise AlignmentError(
                f"aligning group {group.name} changed the network's function (max logit difference {error:.3g}); "
                "a layer tied to it is missing from the group"
            )
    raise AlignmentError(f"the aligned network differs from its source (max logit difference {error:.3g})")
