"""Depth balancing for CLAFusion: identity layers inserted into the shallower network, or layers of the deeper MLP
merged into their successors (Nguyen et al., "On Cross-Layer Alignment for Model Fusion of Heterogeneous Neural
Networks", ICASSP 2023, Sec. 3.2; hsgser/clafusion ``--balance-method add|merge``).

A network is described by its :class:`fusion.models.ModelSpec` (read back from the module by
:func:`fusion.models.spec_of`) and by its *units*: the hidden conv/linear layers in execution order, each with the
BatchNorm that follows it, plus the output layer. Both come from the neuron groups
(:func:`fusion.groups.neuron_groups`): one group per hidden layer for MLPs and VGGs. ResNets are balanced block by
block (:func:`insert_identity_blocks`).

Identity layers keep the function exactly, because every inserted layer reads a post-ReLU (non-negative) input ``h``:

- linear: ``W = I``, ``b = 0``, so ``ReLU(I h + 0) = h``;
- conv 3x3, padding 1: ``W[c, c, 1, 1] = 1`` and zero elsewhere (the centre-1 kernel), ``b = 0``;
- BatchNorm in eval mode, ``gamma (x - mu) / sqrt(var + eps) + beta = x`` with ``mu = 0``, ``var = 1 - eps``,
  ``gamma = 1``, ``beta = 0``;
- residual block: a zero residual branch, so ``ReLU(0 + h) = h``.

Merging is not function preserving: the ReLU after a merged layer is replaced by a diagonal matrix ``D`` estimated from
the layer's pre-activations ``z`` over training samples (CLAFusion's ``--relu-approx-method``):
``sum``: ``d_i = 1[sum_s z_is >= 0]``; ``majority``: ``d_i = 1[mean_s 1[z_is > 0] >= 1/2]``; ``average``:
``d_i = mean_s 1[z_is > 0]``; ``none``: ``D = I`` (the ReLU is dropped). The merged layer then computes
``W_next D (S (W h + b - mu) + beta) + b_next``, with the layer's BatchNorm folded in (``S = diag(gamma /
sqrt(var + eps))``, eval-mode statistics).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from fusion.errors import ArchitectureError, ConfigError
from fusion.groups import NeuronGroup, neuron_groups
from fusion.models import ModelSpec, block_names, build_model, family, stage_sizes
from fusion.zoo import architecture

ReluApproximation = Literal["sum", "majority", "average", "none"]


@dataclass(frozen=True)
class Unit:
    """One conv/linear layer and the BatchNorm directly after it (``None`` without one)."""

    layer: str
    norm: str | None


@dataclass(frozen=True)
class HiddenLayer:
    """A layer CLAFusion aligns: its name, width and the modules whose outputs are its activations (what
    :func:`fusion.alignment.activation_features` reads of a group)."""

    name: str
    size: int
    outputs: tuple[str, ...]


def hidden_layers(model: nn.Module, spec: ModelSpec, groups: Sequence[NeuronGroup]) -> list[HiddenLayer]:
    """The layers CLAFusion aligns, in execution order: the neuron groups for MLPs and VGGs (one per hidden layer);
    for ResNets the residual blocks, read at the block's output (after the addition and ReLU), since the reference
    aligns blocks, not layers."""
    if family(spec) != "resnet":
        return [HiddenLayer(g.name, g.size, tuple(g.outputs)) for g in groups]
    modules = dict(model.named_modules())
    return [HiddenLayer(name, modules[name].conv2.out_channels, (name,)) for name in block_names(spec)]


def units(model: nn.Module, groups: Sequence[NeuronGroup]) -> tuple[list[Unit], str]:
    """The hidden units of ``model`` (one per group, in execution order) and the name of its output layer."""
    hidden = []
    for group in groups:
        if len(group.layers) != 1:
            raise ArchitectureError(f"group {group.name} ties {len(group.layers)} layers: not a plain layer stack")
        norm = group.outputs[0] if group.outputs[0] != group.layers[0] else None
        hidden.append(Unit(group.layers[0], norm))
    names = {u.layer for u in hidden}
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in names]
    if len(layers) != 1:
        raise ArchitectureError(f"expected one output layer besides the hidden groups, found {layers}")
    return hidden, layers[0]


def copy_unit(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], to: Unit, frm: Unit) -> None:
    for new, old in ((to.layer, frm.layer), (to.norm, frm.norm)):
        if new is None:
            continue
        for key in [k for k in target if k.startswith(new + ".")]:
            target[key] = source[old + key[len(new) :]].clone()


def identity_unit(target: dict[str, torch.Tensor], unit: Unit, eps: float) -> None:
    weight = target[f"{unit.layer}.weight"]
    if weight.shape[0] != weight.shape[1]:
        raise ArchitectureError(
            f"{unit.layer}: an identity layer needs as many outputs as inputs, got {tuple(weight.shape)}"
        )
    identity = torch.zeros_like(weight)
    centre = tuple(k // 2 for k in weight.shape[2:])
    for channel in range(weight.shape[0]):
        identity[(channel, channel, *centre)] = 1.0
    target[f"{unit.layer}.weight"] = identity
    if f"{unit.layer}.bias" in target:
        target[f"{unit.layer}.bias"] = torch.zeros_like(target[f"{unit.layer}.bias"])
    if unit.norm is not None:
        n = f"{unit.norm}."
        target[n + "weight"] = torch.ones_like(target[n + "weight"])
        target[n + "bias"] = torch.zeros_like(target[n + "bias"])
        target[n + "running_mean"] = torch.zeros_like(target[n + "running_mean"])
        target[n + "running_var"] = torch.full_like(target[n + "running_var"], 1.0 - eps)
        target[n + "num_batches_tracked"] = torch.zeros_like(target[n + "num_batches_tracked"])


@dataclass(frozen=True, eq=False)
class Balanced:
    """A network rebuilt at another depth: the model, its spec, and the positions (hidden-layer indices of the
    deeper network) where identity layers were inserted or that were merged away."""

    model: nn.Module
    spec: ModelSpec
    inserted: list[int]
    merged: list[int]


def insert_identity_layers(
    shallow: nn.Module,
    shallow_spec: ModelSpec,
    shallow_groups: Sequence[NeuronGroup],
    deep_spec: ModelSpec,
    layer_map: Sequence[int],
    example: torch.Tensor,
) -> Balanced:
    """The shallow network at the deep network's depth and layer layout, computing the same function.

    ``layer_map[k]`` is the deep hidden layer that shallow hidden layer ``k`` lands on (strictly increasing, starting at
    0); every other deep position gets an identity layer as wide as the layer before it. MLP: hidden widths
    ``(w_0, ..., w_0, w_1, ...)``; VGG: the deep VGG's plan at the shallow VGG's width multiplier (so each stage must
    map onto the same stage).
    """
    depth = sum(stage_sizes(deep_spec))
    if layer_map[0] != 0 or any(b <= a for a, b in itertools.pairwise(layer_map)) or layer_map[-1] >= depth:
        raise ConfigError(f"the layer map must increase strictly from 0 to below {depth}, got {list(layer_map)}")
    if family(shallow_spec) == "resnet":
        return insert_identity_blocks(shallow, shallow_spec, deep_spec, layer_map)
    if "hidden" in architecture(shallow_spec.arch).knobs:
        widths, source = [], 0
        for position in range(depth):
            if source < len(layer_map) and layer_map[source] == position:
                widths.append(shallow_spec.hidden[source])
                source += 1
            else:
                widths.append(widths[-1])
        spec = replace(shallow_spec, hidden=tuple(widths))
    else:
        spec = replace(shallow_spec, arch=deep_spec.arch)
    balanced = build_model(spec)
    balanced_groups = neuron_groups(balanced, example)
    old_units, old_output = units(shallow, shallow_groups)
    new_units, new_output = units(balanced, balanced_groups)
    source_state = {k: v.detach().cpu() for k, v in shallow.state_dict().items()}
    state = {k: v.clone() for k, v in balanced.state_dict().items()}
    matched = dict(zip(layer_map, range(len(layer_map))))
    norms = dict(balanced.named_modules())
    for position, unit in enumerate(new_units):
        if position in matched:
            copy_unit(state, source_state, unit, old_units[matched[position]])
        else:
            identity_unit(state, unit, norms[unit.norm].eps if unit.norm else 0.0)
    copy_unit(state, source_state, Unit(new_output, None), Unit(old_output, None))
    try:
        balanced.load_state_dict(state)
    except RuntimeError as exc:
        raise ArchitectureError(f"the shallow network does not fit the deep layout {spec.describe()}: {exc}") from exc
    inserted = [p for p in range(depth) if p not in matched]
    return Balanced(balanced.eval(), spec, inserted, [])


def insert_identity_blocks(
    shallow: nn.Module, shallow_spec: ModelSpec, deep_spec: ModelSpec, layer_map: Sequence[int]
) -> Balanced:
    """The shallow ResNet at the deep ResNet's blocks per stage: ``layer_map`` places its blocks, and every other
    position gets a block whose residual branch is zero (both convs zero, as the reference's identity "kernels"; the
    second BatchNorm with ``gamma = beta = 0``), so that ``relu(0 + x) = x`` on its non-negative input. Unmatched
    positions are never the first block of a stage, so their shortcut is the identity."""
    spec = replace(shallow_spec, arch=deep_spec.arch)
    balanced = build_model(spec)
    source = {k: v.detach().cpu() for k, v in shallow.state_dict().items()}
    state = {k: v.clone() if k.startswith("layer") else source[k].clone() for k, v in balanced.state_dict().items()}
    old_blocks, new_blocks = block_names(shallow_spec), block_names(spec)
    matched = dict(zip(layer_map, range(len(layer_map))))
    norms = dict(balanced.named_modules())
    for position, block in enumerate(new_blocks):
        keys = [k for k in state if k.startswith(block + ".")]
        if position in matched:
            old = old_blocks[matched[position]]
            for key in keys:
                state[key] = source[old + key[len(block) :]].clone()
            continue
        for key in keys:
            state[key] = torch.zeros_like(state[key])
        for norm in ("bn1", "bn2"):
            if isinstance(norms[f"{block}.{norm}"], nn.BatchNorm2d):
                n = f"{block}.{norm}."
                state[n + "weight"] = torch.full_like(state[n + "weight"], 1.0 if norm == "bn1" else 0.0)
                eps = norms[f"{block}.{norm}"].eps
                state[n + "running_var"] = torch.full_like(state[n + "running_var"], 1.0 - eps)
    try:
        balanced.load_state_dict(state)
    except RuntimeError as exc:
        raise ArchitectureError(f"the shallow network does not fit the deep layout {spec.describe()}: {exc}") from exc
    depth = len(new_blocks)
    return Balanced(balanced.eval(), spec, [p for p in range(depth) if p not in matched], [])


def relu_diagonal(preactivations: torch.Tensor, how: ReluApproximation) -> torch.Tensor:
    """``d: (neurons,)`` approximating ReLU by ``diag(d)`` from pre-activations ``(neurons, samples)``."""
    z = preactivations.double()
    if how == "sum":
        return (z.sum(1) >= 0).double()
    if how == "majority":
        return ((z > 0).double().mean(1) >= 0.5).double()
    if how == "average":
        return (z > 0).double().mean(1)
    if how == "none":
        return torch.ones(z.shape[0], dtype=torch.float64)
    raise ConfigError(f"relu_approximation must be sum, majority, average or none, got {how!r}")


def merge_layers(
    deep: nn.Module,
    deep_spec: ModelSpec,
    deep_groups: Sequence[NeuronGroup],
    layer_map: Sequence[int],
    preactivations: dict[str, torch.Tensor],
    how: ReluApproximation,
    example: torch.Tensor,
) -> Balanced:
    """The deep MLP at the shallow depth: each deep hidden layer the map skips is merged into the next kept layer
    (into the output layer after the last kept one), its ReLU approximated as in the module docstring.

    ``preactivations`` maps each deep group to its pre-ReLU activations ``(neurons, samples)`` on training inputs.
    Kept layers ``layer_map`` keep their widths: the result is an MLP with hidden widths ``hidden[layer_map]``.
    """
    if deep_spec.arch != "mlp":
        raise ConfigError(f"merging layers is defined for MLPs only (CLAFusion's merge), got {deep_spec.arch}")
    spec = replace(deep_spec, hidden=tuple(deep_spec.hidden[p] for p in layer_map))
    merged_model = build_model(spec)
    old_units, old_output = units(deep, deep_groups)
    new_units, new_output = units(merged_model, neuron_groups(merged_model, example))
    modules = dict(deep.named_modules())
    source = {k: v.detach().cpu().double() if v.is_floating_point() else v for k, v in deep.state_dict().items()}
    state = {k: v.clone() for k, v in merged_model.state_dict().items()}
    fan_in = math.prod(deep_spec.input_shape)
    carry_w, carry_b = torch.eye(fan_in, dtype=torch.float64), torch.zeros(fan_in, dtype=torch.float64)
    kept = list(layer_map) + [len(old_units)]
    targets = new_units + [Unit(new_output, None)]
    sources = old_units + [Unit(old_output, None)]
    target = 0
    for position, unit in enumerate(sources):
        weight = source[f"{unit.layer}.weight"]
        bias = source.get(f"{unit.layer}.bias", torch.zeros(weight.shape[0], dtype=torch.float64))
        if position != kept[target]:
            scale, shift = torch.ones_like(bias), bias
            if unit.norm is not None:
                n, norm = f"{unit.norm}.", modules[unit.norm]
                scale = source[n + "weight"] / (source[n + "running_var"] + norm.eps).sqrt()
                shift = scale * (bias - source[n + "running_mean"]) + source[n + "bias"]
            d = relu_diagonal(preactivations[deep_groups[position].name], how)
            carry_w = (d * scale)[:, None] * (weight @ carry_w)
            carry_b = d * (scale * (weight @ carry_b) + shift)
            continue
        new = targets[target]
        copy_unit(state, source, new, unit)
        merged_w, offset = weight @ carry_w, weight @ carry_b
        state[f"{new.layer}.weight"] = merged_w.float()
        if f"{new.layer}.bias" in state:
            state[f"{new.layer}.bias"] = (bias + offset).float()
        elif new.norm is not None:
            state[f"{new.norm}.running_mean"] = (source[f"{unit.norm}.running_mean"] - offset).float()
        elif offset.abs().max() > 0:
            raise ConfigError(f"merging into {new.layer} needs a bias, which this network has not")
        carry_w = torch.eye(weight.shape[0], dtype=torch.float64)
        carry_b = torch.zeros(weight.shape[0], dtype=torch.float64)
        target += 1
    merged_model.load_state_dict(state)
    merged = [p for p in range(len(old_units)) if p not in set(layer_map)]
    return Balanced(merged_model.eval(), spec, [], merged)
