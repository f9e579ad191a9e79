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

from fusion.distributed import shard, world_size
from fusion.errors import ArchitectureError, ConfigError, FusionError
from fusion.groups import Member, NeuronGroup, channel_dim, groups_by_module, neuron_slices
from fusion.heads import head_transports
from fusion.problems import Checked, Checks
from fusion.progress import Progress, no_progress
from fusion.records import Record
from fusion.surgery import apply_transports, group_sizes, mapped_tensors, transform, with_state
from fusion.train import predict_logits
from fusion.transport import (
    Correction,
    CostNormalization,
    Gram,
    Metric,
    Solver,
    Transport,
    marginal,
    solve_transport,
)


class AlignmentError(FusionError):
    """An alignment that must preserve the function does not: names the group at fault."""


@dataclass(frozen=True)
class AlignOptions(Record, Checked):
    """How neurons are compared and matched. Defaults follow otfusion's published weights-mode configuration
    (exact OT, Euclidean not squared, uniform marginals, no normalisation)."""

    mode: Literal["weights", "activations"] = field(
        default="weights",
        metadata={"help": "compare neurons by incoming weights or by activations on training samples"},
    )
    solver: Solver = field(
        default="exact", metadata={"help": "exact OT (a permutation for equal widths) or entropic Sinkhorn"}
    )
    reg: float = field(default=0.01, metadata={"help": "Sinkhorn regularisation, relative to the normalised cost"})
    metric: Metric = field(default="euclidean", metadata={"help": "ground metric between neuron features"})
    normalize_rows: bool = field(default=False, metadata={"help": "scale each neuron's feature to unit norm first"})
    cost_normalization: CostNormalization = field(default="none", metadata={"help": "rescale the cost matrix"})
    marginals: Literal["uniform", "importance"] = field(
        default="uniform", metadata={"help": "neuron masses: equal, or proportional to feature norm"}
    )
    correction: Correction = field(
        default="marginals",
        metadata={"help": "maps from the plan: exact for unequal widths, or otfusion's T/beta on both sides"},
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

    def check(self, checks: Checks) -> None:
        choices = {
            "mode": ("weights", "activations"),
            "solver": ("exact", "sinkhorn"),
            "metric": ("euclidean", "sqeuclidean", "cosine"),
            "cost_normalization": ("none", "max", "median", "mean", "log"),
            "marginals": ("uniform", "importance"),
            "correction": ("marginals", "reference"),
            "features": ("incoming", "both"),
        }
        for name, allowed in choices.items():
            checks.choice(name, getattr(self, name), allowed)
        checks.whole("sweeps", self.sweeps, 1, 1000)
        checks.whole("samples", self.samples, 1, 100_000)
        checks.number("reg", self.reg, 0, above=True)
        checks.seed("seed", self.seed)


@dataclass(frozen=True, eq=False)
class Alignment:
    """How ``source`` was aligned: the map of every group (by group name), per-group costs and seconds, and the
    sweeps used. The aligned parameters are computed from ``source_state`` (the source's own tensors) when asked:
    :meth:`tensors` one by one, ``state`` and ``model`` (the aligned network, holding the tensors of ``state``) on
    first use, so an alignment used only for a streamed average never holds a second copy of the network."""

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
                    tensor = transform(tensor, read, transports[read.group], "consumer", current)
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
            tensor = transform(tensor, written, transports[target.name], "producer", sizes)
        return neuron_slices(tensor, member, sizes)


@torch.no_grad()
def activation_features(
    model: nn.Module, groups: list[NeuronGroup], inputs: torch.Tensor, device: torch.device, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Per group, ``(neurons, samples * positions)``: the activations at the group's outputs, eval mode, batched."""
    modules = dict(model.named_modules())
    wanted = {name for group in groups for name in group.outputs}
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}

    def hook(name: str):
        def record(module: nn.Module, args: object, output: torch.Tensor) -> None:
            channels = output.detach().movedim(channel_dim(module), 0)
            collected[name].append(channels.reshape(len(channels), -1).float().cpu())

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in wanted]
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
    return {group.name: torch.cat([per_module[name] for name in group.outputs], 1) for group in groups}


def align(
    model: nn.Module,
    reference: nn.Module,
    groups: list[NeuronGroup],
    options: AlignOptions = AlignOptions(),
    inputs: torch.Tensor | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> Alignment:
    """Transport ``model``'s neurons onto ``reference``'s, group by group; returns the aligned copy and the maps.

    ``groups`` come from :func:`fusion.groups.neuron_groups` on either model (both must share the architecture; widths
    may differ). ``inputs`` are the training samples for ``mode="activations"``.
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
        acts_a = activation_features(model, groups, share, device)
        acts_b = activation_features(reference, groups, share, device)
    builder = FeatureBuilder(groups, options.features, sizes_a, sizes_b, keep=options.sweeps > 1)
    transports: dict[str, Transport] = {}
    costs: dict[str, float] = {}
    seconds: dict[str, float] = {}
    sweeps = 1 if options.mode == "activations" else options.sweeps
    done_sweeps = 0
    versions: dict[str, int] = {}
    solved_at: dict[str, dict[str, int]] = {}
    partners = {g.name: [p for p in groups if p.attention == g.attention] if g.heads > 1 else [g] for g in groups}

    def gram_of(group: NeuronGroup) -> Gram:
        if options.mode == "activations":
            gram = Gram.of(acts_a[group.name].to(device), acts_b[group.name].to(device))
            return gram.summed_over_ranks() if len(inputs) >= world_size() else gram
        return builder.gram(group, state_a, state_b, transports, versions)

    def solve(group: NeuronGroup) -> list[Transport]:
        """The group's map, or, for an attention group, the maps of all its attention's groups at once."""
        if group.heads > 1:
            if options.marginals != "uniform":
                raise ConfigError(
                    f"{group.attention}: attention heads are aligned with uniform marginals, got "
                    f"marginals={options.marginals!r}"
                )
            return head_transports(
                [gram_of(p) for p in partners[group.name]],
                group.heads,
                metric=options.metric,
                normalize_rows=options.normalize_rows,
                cost_normalization=options.cost_normalization,
                correction=options.correction,
                solver=options.solver,
                reg=options.reg,
            )
        gram = gram_of(group)
        mu = nu = None
        if options.marginals == "importance":
            mu = marginal(len(gram.norms_a), gram.norms_a.sqrt())
            nu = marginal(len(gram.norms_b), gram.norms_b.sqrt())
        transport = solve_transport(
            gram,
            metric=options.metric,
            normalize_rows=options.normalize_rows,
            cost_normalization=options.cost_normalization,
            solver=options.solver,
            reg=options.reg,
            mu=mu,
            nu=nu,
            correction=options.correction,
        )
        return [transport]

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
    width, else :class:`ArchitectureError` names it."""
    for group in groups:
        if group.heads > 1:
            heads = [m.get_submodule(group.attention).num_heads for m in (model, reference)]
            if heads[0] != heads[1] or sizes_a[group.name] != sizes_b[group.name]:
                raise ArchitectureError(
                    f"{group.attention}: {heads[0]} heads of {sizes_a[group.name] // heads[0]} dimensions against "
                    f"the reference's {heads[1]} of {sizes_b[group.name] // heads[1]}; attention is aligned between "
                    "models of one head count and width"
                )


def is_hard(transports: dict[str, Transport]) -> bool:
    return all(t.permutation is not None for t in transports.values())


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

    On a mismatch, each group's map is applied alone to find the group at fault, and :class:`AlignmentError` names it.
    """
    expected = predict_logits(source, probe, device)
    error = float((predict_logits(aligned, probe, device) - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if error <= tolerance * scale:
        return error
    state = {k: v.detach().cpu() for k, v in source.state_dict().items()}
    for group in groups:
        single = with_state(source, apply_transports(state, groups, {group.name: transports[group.name]}))
        if float((predict_logits(single, probe, device) - expected).abs().max()) > tolerance * scale:
            raise AlignmentError(
                f"aligning group {group.name} changed the network's function (max logit difference {error:.3g}); "
                "a layer tied to it is missing from the group"
            )
    raise AlignmentError(f"the aligned network differs from its source (max logit difference {error:.3g})")
