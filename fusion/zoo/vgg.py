"""The zoo's VGG-11/13/16 (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015) with the single linear classifier that otfusion uses on CIFAR; sized by a width multiplier."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from fusion.errors import ArchitectureError
from fusion.zoo.layers import (
    check_square,
    conv_stack,
    layer_parameters,
    scaled,
    stack_parameters,
    width_label,
    width_multiplier,
)
from fusion.zoo.spec import Architecture, ModelSpec, Shape

VGG_LAYERS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}
"""Each VGG's plan: the channels of each 3x3 conv at width 1, "M" a 2x2 max-pool."""


def vgg_plan(spec: ModelSpec) -> tuple[int | str, ...]:
    """The plan of ``spec.arch`` at ``spec.width``."""
    return tuple(x if x == "M" else scaled(int(x), spec.width) for x in VGG_LAYERS[spec.arch])


class VGG(nn.Module):
    """VGG-11/13/16 features with a single linear classifier over the flattened final map."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.features, channels, size = conv_stack(spec.input_shape[0], spec.input_shape[1], vgg_plan(spec), spec)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels * size * size, spec.num_classes, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def vgg_parameters(spec: ModelSpec) -> int:
    """The conv stack's parameters and the classifier's over its flattened map."""
    total, channels, size = stack_parameters(spec.input_shape[0], spec.input_shape[1], vgg_plan(spec), spec)
    return total + layer_parameters(channels * size * size, spec.num_classes, 1, spec.bias, False)


def vgg_defaults(input_shape: Shape) -> dict[str, Any]:
    """Width 1/4 on 8x8 inputs, so that it trains in seconds; else width 1."""
    return {"width": 0.25 if input_shape[1] <= 8 else 1.0}


def vgg_stages(spec: ModelSpec) -> list[int]:
    """The convs between max-pools, read from the plan so that pools skipped on small inputs do not merge stages."""
    sizes, count = [], 0
    for item in VGG_LAYERS[spec.arch]:
        if item == "M":
            sizes.append(count)
            count = 0
        else:
            count += 1
    return [s for s in sizes if s]


def vgg_spec(model: nn.Module, input_shape: Shape) -> ModelSpec:
    """The spec of a :class:`VGG`: the plan with its number of convs, the width of its last conv, BatchNorm, bias."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    name = next((a for a, plan in VGG_LAYERS.items() if sum(x != "M" for x in plan) == len(convs)), None)
    if name is None:
        raise ArchitectureError(f"a VGG with {len(convs)} conv layers is none of {', '.join(VGG_LAYERS)}")
    return ModelSpec(
        name,
        input_shape,
        model.classifier.out_features,
        width=convs[-1].out_channels / 512,
        batch_norm=any(isinstance(m, nn.BatchNorm2d) for m in model.features),
        bias=convs[0].bias is not None,
    )


ARCHITECTURES = tuple(
    Architecture(
        name,
        "vgg",
        VGG,
        knobs=("width", "batch_norm", "bias"),
        check=check_square,
        estimate=vgg_parameters,
        defaults=vgg_defaults,
        label=width_label,
        stages=vgg_stages,
        resize=functools.partial(width_multiplier, build=VGG),
        module=VGG,
        read=vgg_spec,
    )
    for name in VGG_LAYERS
)
"""VGG-11, VGG-13 and VGG-16."""
