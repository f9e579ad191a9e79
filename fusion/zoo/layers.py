"""The layers the zoo's families share, and their parameter counts.

A layer of ``n`` outputs over ``m`` inputs holds ``n m k^2`` weights (``k = 3`` for the convs, 1 for linear layers and
1x1 shortcuts), ``n`` biases when it has them, and a BatchNorm after it adds ``2 n`` (its scale and shift).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from fusion.errors import ArchitectureError
from fusion.zoo.spec import ModelSpec


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least 1."""
    return max(1, round(channels * width))


def layer_parameters(fan_in: int, out: int, kernel: int, bias: bool, norm: bool) -> int:
    """``out fan_in kernel^2`` weights, ``out`` biases with ``bias``, ``2 out`` BatchNorm entries with ``norm``."""
    return fan_in * out * kernel * kernel + (out if bias else 0) + (2 * out if norm else 0)


def classifier_head(fan_in: int, spec: ModelSpec) -> nn.Sequential:
    """``Flatten -> [Linear -> (BN) -> ReLU] * len(spec.hidden) -> Linear`` to ``spec.num_classes`` logits: the whole
    MLP, and the CNN's classifier over its flattened feature map."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in spec.hidden:
        layers.append(nn.Linear(fan_in, width, bias=spec.bias))
        if spec.batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        fan_in = width
    layers.append(nn.Linear(fan_in, spec.num_classes, bias=spec.bias))
    return nn.Sequential(*layers)


def head_parameters(fan_in: int, spec: ModelSpec) -> int:
    """The parameters of :func:`classifier_head` over ``fan_in`` features."""
    total = 0
    for width in spec.hidden:
        total += layer_parameters(fan_in, width, 1, spec.bias, spec.batch_norm)
        fan_in = width
    return total + layer_parameters(fan_in, spec.num_classes, 1, spec.bias, False)


def conv_stack(
    in_channels: int, size: int, plan: tuple[int | str, ...], spec: ModelSpec
) -> tuple[nn.Sequential, int, int]:
    """Conv 3x3 (pad 1) -> (BN) -> ReLU for each int in ``plan``, 2x2 max-pool for each "M".

    A pool that would shrink the map below 1x1 is skipped, so the same plan serves 8x8 digits and 32x32 CIFAR.
    Returns the stack, its output channels and its output spatial size.
    """
    layers: list[nn.Module] = []
    for item in plan:
        if item == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        out_channels = int(item)
        layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=spec.bias))
        if spec.batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU())
        in_channels = out_channels
    return nn.Sequential(*layers), in_channels, size


def stack_parameters(in_channels: int, size: int, plan: tuple[int | str, ...], spec: ModelSpec) -> tuple[int, int, int]:
    """The parameters of :func:`conv_stack`, with its output channels and spatial size."""
    total = 0
    for item in plan:
        if item == "M":
            size = size // 2 if size >= 2 else size
            continue
        total += layer_parameters(in_channels, int(item), 3, spec.bias, spec.batch_norm)
        in_channels = int(item)
    return total, in_channels, size


def layer_widths(model: nn.Module) -> list[int]:
    """Output widths of the conv and linear layers, in the order the model registers them."""
    return [int(m.weight.shape[0]) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def width_multiplier(spec: ModelSpec, model: nn.Module, build: Callable[[ModelSpec], nn.Module]) -> dict[str, float]:
    """``{"width": w}``: the width multiplier ``w`` (a multiple of 1/64) at which ``build`` gives ``spec`` the conv
    widths of ``model``; :class:`ArchitectureError` when none does."""
    widths = layer_widths(model)
    for numerator in sorted(set(widths)):
        candidate = dataclasses.replace(spec, width=numerator / 64)
        if layer_widths(build(candidate))[:-1] == widths[:-1]:
            return {"width": candidate.width}
    raise ArchitectureError(f"the widths {widths[:-1]} are no uniform width multiple of {spec.arch}")


def width_label(spec: ModelSpec) -> str:
    """``x0.25``: the label of a spec sized by its width multiplier."""
    return f"x{spec.width:g}"


def check_square(spec: ModelSpec) -> None:
    """Refuse inputs whose height and width differ."""
    if spec.input_shape[1] != spec.input_shape[2]:
        raise ArchitectureError(f"{spec.arch} needs square inputs (H == W), got input_shape={spec.input_shape}")
