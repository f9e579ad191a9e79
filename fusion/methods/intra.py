"""Intra-Fusion (Theus et al., "Towards Meta-Pruning via Optimal Transport", ICLR 2024) and plain magnitude pruning.

Both prune one network to a target sparsity per neuron group, keeping the ``m = round(n (1 - sparsity))`` most
important neurons (:mod:`fusion.importance`, L1 by default). Magnitude pruning drops the others. Intra-Fusion instead
merges every neuron into the kept ones with an optimal transport plan ``T: (n, m)`` between all neurons and the kept
ones (marginals proportional to importance by default, as in the paper, or uniform), on the cost
``C_ij = ||f_i/|f_i| - f_kj/|f_kj| ||`` between unit-normalised neuron features ``f`` (the group's incoming rows and
outgoing columns concatenated). Each neuron's outgoing weights are handed, plan-weighted, to the kept neurons it was
sent to (``diag(1/mu) T``). Each kept neuron's incoming weights and bias (``rows``):

- ``rescaled`` (default): the plan-weighted average of the rows sent to it (``P = T diag(1/nu)``), rescaled so that
  its norm is the average of their norms: ``P'_ij = P_ij s_j``, ``s_j = sum_i P_ij |r_i| / |sum_i P_ij r_i|`` (``r_i``
  neuron i's incoming weights; the bias follows the same map). Averaging rows that point in different directions
  shrinks them, so every merged neuron fires weaker than the neurons it stands for, the consumers' biases take over,
  and with every group pruned the network collapses (0.13-0.19 test accuracy at 50 % on the digits CNN-BN 16-32-64,
  ``bench/intra_reference.py``). With ReLU, restoring the norm restores the activation scale; duplicates have equal
  rows, so ``s_j = 1`` and a duplicated neuron still merges back exactly.
- ``barycentre``: the plain average ``T diag(1/nu)`` (exact on duplicates, collapses as above).
- ``sum``: the reference's single map ``T^T diag(1/mu)`` on both sides: plan-weighted sums (row sums ``n/m``), which
  over-scales every layer but keeps the activation scale from vanishing; not exact on duplicates.

On the digits CNN-BN, every group pruned at 50 % with L1 importance, three seeds: ``rescaled`` 0.62 / 0.69 / 0.50,
the reference code 0.44 / 0.30 / 0.36, ``barycentre`` 0.22 / 0.11 / 0.24, magnitude pruning 0.15 / 0.19 / 0.12.

BatchNorm is folded into the preceding layer first, ``W' = W gamma / sqrt(var + eps)``,
``b' = (b - mean) gamma / sqrt(var + eps) + beta``, which preserves the function exactly (the reference omits ``eps``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from fusion.blocks import whole_blocks
from fusion.errors import ConfigError
from fusion.groups import NORMS, NeuronGroup, neuron_groups, neuron_slices
from fusion.heads import refuse_head_pruning, set_head_counts
from fusion.importance import Importance, loss_gradients, neuron_importance
from fusion.methods.base import Context, Details, GroupReport, MethodOutput, Survival
from fusion.options import Options
from fusion.problems import Checks
from fusion.records import Record
from fusion.surgery import apply_transports, group_sizes, with_state
from fusion.transport import Solver, Transport, ground_cost, marginal, transport_plan


@dataclass(frozen=True)
class PruneOptions(Options):
    """Magnitude pruning: keep the most important neurons of every group, drop the rest."""

    sparsity: float = field(default=0.5, metadata={"help": "fraction of each group's neurons removed"})
    importance: Importance = field(default="l1", metadata={"help": "neuron importance that decides who is kept"})

    def check(self, checks: Checks) -> None:
        checks.number("sparsity", self.sparsity, 0, 1, above=True, below=True)


@dataclass(frozen=True)
class IntraOptions(PruneOptions):
    """Intra-Fusion: magnitude pruning's choice of kept neurons, then an OT merge of all neurons into them."""

    marginals: Literal["uniform", "importance"] = field(
        default="importance",
        metadata={"help": "neuron masses: proportional to importance (the paper's choice), or equal"},
    )
    solver: Solver = field(default="exact", metadata={"help": "exact OT or entropic Sinkhorn"})
    reg: float = field(default=0.01, metadata={"help": "Sinkhorn regularisation (costs are normalised by their max)"})
    rows: Literal["rescaled", "barycentre", "sum"] = field(
        default="rescaled",
        metadata={
            "help": "kept neurons' incoming weights: the merged rows' average rescaled to their mean norm, "
            "the plain average, or the reference's plan-weighted sum"
        },
    )

    def check(self, checks: Checks) -> None:
        super().check(checks)
        checks.number("reg", self.reg, 0, above=True)


@dataclass(frozen=True)
class PrunedGroup(Record):
    """One pruned group: its ``size`` before pruning, the ``kept`` neurons (sorted) and every neuron's
    ``importance``."""

    size: int
    kept: list[int]
    importance: list[float]

    def survival(self, name: str) -> Survival:
        """The group's neurons, all of parent 0, each kept or not."""
        kept = set(self.kept)
        every = range(self.size)
        return Survival(name, [0] * self.size, list(every), self.importance, [i in kept for i in every])


@dataclass(frozen=True)
class MergedGroup(PrunedGroup):
    """One group of an Intra-Fusion: a pruned group, and the kept neuron each neuron was merged into (the largest
    entry of its row of the plan)."""

    merged_into: list[int]


@dataclass(frozen=True)
class PruneDetails(Details):
    """Magnitude pruning's choice, per group (keyed by group name)."""

    groups: dict[str, PrunedGroup]
    survival_heading: ClassVar[str] = "Kept and dropped neurons"

    def survival(self) -> list[Survival]:
        return [group.survival(name) for name, group in self.groups.items()]


@dataclass(frozen=True)
class IntraDetails(PruneDetails):
    """Intra-Fusion's choice of kept neurons and where it merged every neuron, per group (keyed by group name)."""

    groups: dict[str, MergedGroup]
    survival_heading: ClassVar[str] = "Kept and merged neurons"


def fold_batchnorm(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with every BatchNorm folded into the conv/linear layer it follows and replaced by
    ``nn.Identity`` (see the module docstring); folded layers gain a bias if they had none."""
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    for group in neuron_groups(folded, example_inputs):
        for layer_name, norm_name in group.chains:
            norm, layer = modules[norm_name], modules[layer_name]
            if not isinstance(norm, NORMS):
                continue
            scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias.detach() - norm.running_mean * scale
            with torch.no_grad():
                layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.ndim - 1))))
                bias = layer.bias.detach() * scale if layer.bias is not None else torch.zeros_like(shift)
                layer.bias = nn.Parameter(bias + shift)
            parent_name, _, attribute = norm_name.rpartition(".")
            setattr(modules[parent_name] if parent_name else folded, attribute, nn.Identity())
    return folded


def kept_neurons(
    state: dict[str, torch.Tensor],
    groups: list[NeuronGroup],
    options: PruneOptions,
    gradients: dict[str, torch.Tensor] | None,
) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
    """The ``round(n (1 - sparsity))`` most important neurons of every group (sorted), and every neuron's importance;
    attention keeps ``round(heads (1 - sparsity))`` whole heads (:func:`fusion.blocks.whole_blocks`)."""
    kept, scores, counts = {}, {}, {}
    sizes = group_sizes(state, groups)
    for group in groups:
        units = group.heads if group.heads > 1 else group.size
        count = round(units * (1 - options.sparsity))
        if units < 2 or count < 1:
            what = "heads" if group.heads > 1 else "neurons"
            raise ConfigError(f"group {group.name} has {units} {what}: too few to prune at sparsity {options.sparsity}")
        scores[group.name] = neuron_importance(state, group, sizes, options.importance, gradients)
        counts[group.name] = count * (group.size // units)
    kept.update(whole_blocks(scores, groups, counts))
    for group in groups:
        if group.name not in kept:
            kept[group.name] = sorted(torch.topk(scores[group.name], counts[group.name]).indices.tolist())
    return kept, scores


def neuron_features(state: dict[str, torch.Tensor], group: NeuronGroup, sizes: dict[str, int]) -> torch.Tensor:
    """``(n, d)``: each neuron's incoming rows (weights, biases, normalisation) and outgoing columns, concatenated."""
    parts = [
        neuron_slices(state[m.key], m, sizes) for m in group.members() if m.param not in ("running_mean", "running_var")
    ]
    return torch.cat(parts, 1)


def merged_rows(
    state: dict[str, torch.Tensor], group: NeuronGroup, sizes: dict[str, int], transport: Transport, rows: str
) -> Transport:
    """``transport`` with its producer map chosen by ``rows`` (module docstring)."""
    if rows == "barycentre":
        return transport
    if rows == "sum":
        return dataclasses.replace(transport, rows=transport.consumer)
    incoming = torch.cat(
        [neuron_slices(state[m.key], m, sizes) for m in group.producers if m.param == "weight"], 1
    ).double()
    producer = transport.producer.double()
    scale = (producer.T @ incoming.norm(dim=1)) / (producer.T @ incoming).norm(dim=1).clamp_min(1e-12)
    return dataclasses.replace(transport, rows=(producer * scale[None, :]).float())


def intra_fuse(
    model: nn.Module,
    groups: list[NeuronGroup],
    kept: dict[str, list[int]],
    options: IntraOptions = IntraOptions(),
    importance: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, dict[str, Transport]]:
    """Merge every group's neurons into its ``kept`` ones with an OT plan (module docstring); returns the smaller
    model and the maps."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    transports = {}
    sizes = group_sizes(state, groups)
    for group in groups:
        features = neuron_features(state, group, sizes)
        index = kept[group.name]
        cost = ground_cost(features, features[index], "euclidean", normalize_rows=True)
        mu = nu = None
        if options.marginals == "importance":
            if importance is None:
                raise ConfigError("importance marginals need the neurons' importance")
            mu = marginal(group.size, importance[group.name])
            nu = marginal(len(index), importance[group.name][index])
        if options.solver == "sinkhorn":
            cost = cost / cost.max().clamp_min(1e-12)
        plan = transport_plan(cost, mu, nu, options.solver, options.reg)
        transport = Transport.from_plan(plan, float((torch.from_numpy(plan) * cost.double()).sum()))
        transports[group.name] = merged_rows(state, group, sizes, transport, options.rows)
    return with_state(model, apply_transports(state, groups, transports)).eval(), transports


def prepare(
    model: nn.Module, options: PruneOptions, context: Context
) -> tuple[nn.Module, list[NeuronGroup], dict[str, list[int]], dict[str, torch.Tensor]]:
    folded = fold_batchnorm(model.cpu(), context.example())
    groups = neuron_groups(folded, context.example())
    gradients = None
    if options.importance == "taylor":
        if context.labels is None:
            raise ConfigError("taylor importance needs labelled training data (data=)")
        gradients = loss_gradients(folded, *context.labelled_sample(512, seed=0))
    state = {k: v.detach() for k, v in folded.state_dict().items()}
    kept, scores = kept_neurons(state, groups, options, gradients)
    return folded, groups, kept, scores


def pruned_groups(
    groups: list[NeuronGroup], kept: dict[str, list[int]], scores: dict[str, torch.Tensor]
) -> dict[str, PrunedGroup]:
    return {g.name: PrunedGroup(g.size, kept[g.name], scores[g.name].tolist()) for g in groups}


def run_prune(models: Sequence[nn.Module], options: PruneOptions, context: Context) -> MethodOutput:
    """Magnitude pruning of one model (BatchNorm folded first, like Intra-Fusion, so the two compare directly)."""
    folded, groups, kept, scores = prepare(models[0], options, context)
    state = {k: v.detach() for k, v in folded.state_dict().items()}
    sizes = group_sizes(state, groups)
    transports = {g.name: Transport.selection(sizes[g.name], kept[g.name]) for g in groups}
    pruned = set_head_counts(with_state(folded, apply_transports(state, groups, transports)), groups).eval()
    reports = [GroupReport(g.name, [g.size], [], []) for g in groups]
    return MethodOutput(
        pruned, [transports], groups, reports, details=PruneDetails(pruned_groups(groups, kept, scores))
    )


def run_intra(models: Sequence[nn.Module], options: IntraOptions, context: Context) -> MethodOutput:
    """Intra-Fusion of one model (see the module docstring)."""
    folded, groups, kept, scores = prepare(models[0], options, context)
    refuse_head_pruning(groups, "Intra-Fusion")
    pruned, transports = intra_fuse(folded, groups, kept, options, scores)
    reports = [GroupReport(g.name, [g.size], [transports[g.name].cost], []) for g in groups]
    merged = {
        name: MergedGroup(group.size, group.kept, group.importance, transports[name].plan.argmax(1).tolist())
        for name, group in pruned_groups(groups, kept, scores).items()
    }
    return MethodOutput(pruned, [transports], groups, reports, details=IntraDetails(merged))
