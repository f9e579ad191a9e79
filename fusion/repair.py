"""REPAIR: renormalise the fused network's neurons to the statistics of its aligned parents.

Averaging aligned networks shrinks the spread of the hidden pre-activations (Jordan et al., "REPAIR: REnormalizing
Permuted Activations for Interpolation Repair", ICLR 2023): neurons that agree only in part partly cancel, so the
variance collapses layer by layer and the averaged network's accuracy with it. REPAIR restores, for every neuron
``i`` at the end of every layer's chain (the layer's output, or the BatchNorm that follows it), the interpolation of
the parents' statistics measured on training inputs,

    mu*_i = sum_k w_k mu_k,i        sigma*_i = sum_k w_k sigma_k,i,

by the per-neuron affine map ``z -> s_i z + t_i`` with ``s_i = sigma*_i / sigma_i`` and ``t_i = mu*_i - s_i mu_i``
(``mu_i, sigma_i`` measured in the fused network). The map is folded into the chain's end, so the architecture is
unchanged: a layer's weight rows are scaled by ``s_i`` and its bias becomes ``s_i b_i + t_i``; a BatchNorm's affine
weight and bias are transformed the same way. Layers are corrected in execution order, each measured after every
layer before it was corrected, so after the pass every corrected neuron has exactly its target mean and standard
deviation on the inputs used. The parents must be aligned to the fused network (neuron ``i`` of every parent is
neuron ``i`` of the fused model): the aligned copies an alignment produces, or the models themselves for vanilla
averaging. In a network with BatchNorm the recomputed statistics already restore each BatchNorm's output to
``(beta, |gamma|)``; REPAIR then moves it to the parents' interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fusion.distributed import all_reduce_sum, batch_share, batches_shared
from fusion.errors import ArchitectureError, DatasetError
from fusion.groups import LAYERS, NORMS, NeuronGroup, channel_dim, trace_order
from fusion.methods.average import mixture_weights

DEAD = 1e-6


@dataclass(frozen=True)
class Statistics:
    """Per-neuron mean and standard deviation of one module's output over a sample (and its spatial positions)."""

    mean: torch.Tensor
    std: torch.Tensor


@dataclass(frozen=True)
class RepairReport:
    """What REPAIR changed: the chain ends corrected, neurons whose fused output was constant (only shifted), ends
    without a bias (only rescaled), and the range of the scales ``s_i``."""

    ends: int
    neurons: int
    dead: int
    unshifted: list[str]
    scale_min: float
    scale_max: float

    def note(self) -> str:
        text = (
            f"REPAIR renormalised {self.neurons} neurons at {self.ends} layers "
            f"(scales {self.scale_min:.3g} to {self.scale_max:.3g})"
        )
        if self.dead:
            text += f"; {self.dead} constant neurons only shifted"
        if self.unshifted:
            text += f"; no bias to shift in {', '.join(self.unshifted)}"
        return text


class _Stop(Exception):
    """Raised by a hook once the measured module has run, so the rest of the forward pass is skipped."""


def chain_ends(model: nn.Module, groups: Sequence[NeuronGroup], example: torch.Tensor) -> list[str]:
    """The modules REPAIR corrects, in execution order: the end of every layer chain of every group."""
    modules = dict(model.named_modules())
    order, _ = trace_order(model, example)
    ends = {end for group in groups for _, end in group.chains}
    return sorted(ends, key=lambda name: order.get(modules[name], len(order)))


@torch.no_grad()
def statistics(
    model: nn.Module,
    names: Sequence[str],
    inputs: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    stop_after: str | None = None,
) -> dict[str, Statistics]:
    """Mean and standard deviation (population, over samples and spatial positions) of every neuron at the output of
    each module in ``names``, in eval mode; with ``stop_after`` the forward pass ends once that module has run.
    Under ``torch.distributed`` each rank measures its block of the batches and the sums are all-reduced."""
    if len(inputs) < 2:
        raise DatasetError("REPAIR needs at least two training inputs to measure neuron statistics")
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    count = {name: 0 for name in names}

    def hook(name: str):
        def record(module: nn.Module, args: object, output: torch.Tensor) -> None:
            channels = output.detach().double().movedim(channel_dim(module), 0)
            values = channels.reshape(len(channels), -1)
            sums[name] = sums.get(name, 0) + values.sum(1)
            squares[name] = squares.get(name, 0) + values.square().sum(1)
            count[name] += values.shape[1]
            if name == stop_after:
                raise _Stop

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    model.eval().to(device)
    try:
        for start in batch_share(len(inputs), batch_size):
            try:
                model(inputs[start : start + batch_size].to(device))
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    if batches_shared(len(inputs), batch_size):
        for name in names:
            all_reduce_sum(sums[name])
            all_reduce_sum(squares[name])
            count[name] = int(all_reduce_sum(torch.tensor(float(count[name]), dtype=torch.float64)))
    result = {}
    for name in names:
        mean = sums[name] / count[name]
        variance = (squares[name] / count[name] - mean.square()).clamp_min(0)
        result[name] = Statistics(mean.float(), variance.sqrt().float())
    return result


def targets(
    parents: Sequence[nn.Module],
    weights: Sequence[float],
    names: Sequence[str],
    inputs: torch.Tensor,
    device: torch.device,
    batch_size: int,
) -> dict[str, Statistics]:
    """``sum_k w_k`` of the parents' means and of their standard deviations, per chain end."""
    measured = [statistics(parent, names, inputs, device, batch_size) for parent in parents]
    return {
        name: Statistics(
            sum(w * m[name].mean for w, m in zip(weights, measured)),
            sum(w * m[name].std for w, m in zip(weights, measured)),
        )
        for name in names
    }


@torch.no_grad()
def fold(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> bool:
    """Fold ``z -> scale * z + shift`` (per output neuron) into ``module``; ``False`` if it has no bias to shift."""
    if isinstance(module, NORMS) and not module.affine:
        raise ArchitectureError("REPAIR needs affine BatchNorm layers (affine=True) to fold its correction into")
    weight = module.weight
    weight.mul_(scale.to(weight).view(-1, *([1] * (weight.dim() - 1))))
    if module.bias is None:
        return False
    module.bias.mul_(scale.to(module.bias)).add_(shift.to(module.bias))
    return True


def check_aligned(model: nn.Module, parents: Sequence[nn.Module], names: Sequence[str]) -> None:
    shapes = {name: module.weight.shape for name, module in model.named_modules() if name in names}
    for index, parent in enumerate(parents):
        theirs = {name: m.weight.shape for name, m in parent.named_modules() if name in shapes}
        if theirs != shapes:
            raise ArchitectureError(
                f"parent {index} is not aligned to the fused model (its layers differ in name or width): REPAIR "
                "needs every parent in the fused model's neuron order"
            )


def repair(
    model: nn.Module,
    parents: Sequence[nn.Module],
    groups: Sequence[NeuronGroup],
    inputs: torch.Tensor,
    weights: Sequence[float] | None = None,
    device: torch.device | None = None,
    batch_size: int = 256,
) -> RepairReport:
    """Renormalise ``model`` in place to the ``weights``-interpolation of its aligned ``parents``' neuron statistics
    on ``inputs`` (see the module docstring). ``groups`` are the model's neuron groups; the model ends in eval mode."""
    device = device or next(model.parameters()).device
    mix = mixture_weights(len(parents), weights)
    modules = dict(model.named_modules())
    names = chain_ends(model, groups, inputs[:2].to(device))
    for name in names:
        if not isinstance(modules[name], LAYERS + NORMS):
            raise ArchitectureError(f"REPAIR cannot fold a correction into {name} ({type(modules[name]).__name__})")
    check_aligned(model, parents, names)
    goal = targets(parents, mix, names, inputs, device, batch_size)
    dead, unshifted, scales = 0, [], []
    for name in names:
        current = statistics(model, [name], inputs, device, batch_size, stop_after=name)[name]
        constant = current.std < DEAD
        scale = torch.where(constant, torch.ones_like(current.std), goal[name].std / current.std.clamp_min(DEAD))
        shift = goal[name].mean - scale * current.mean
        if not fold(modules[name], scale, shift):
            unshifted.append(name)
        dead += int(constant.sum())
        scales.append(scale)
    model.eval()
    every = torch.cat(scales) if scales else torch.ones(1)
    return RepairReport(len(names), int(every.numel()), dead, unshifted, float(every.min()), float(every.max()))
