"""The zoo's ResNet-18/34 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), CIFAR variant: a 3x3
stem without max-pool, four stages of basic blocks, global average pool, linear; sized by a width multiplier."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from fusion.errors import ArchitectureError
from fusion.zoo.layers import layer_parameters, scaled, width_label, width_multiplier
from fusion.zoo.spec import Architecture, ModelSpec, Shape

RESNET_BLOCKS: dict[str, tuple[int, int, int, int]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
"""Each ResNet's basic blocks per stage."""

STAGE_CHANNELS = (64, 128, 256, 512)


def norm_layer(channels: int, batch_norm: bool) -> nn.Module:
    """A BatchNorm over ``channels``, or the identity without ``batch_norm``."""
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a 1x1 conv + BN when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, batch_norm: bool, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm_layer(out_channels, batch_norm)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.bn2 = norm_layer(out_channels, batch_norm)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias), norm_layer(out_channels, batch_norm)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, four stages of basic blocks (strides 1, 2, 2, 2), global average pool, linear."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        bias = spec.bias and not spec.batch_norm
        widths = [scaled(c, spec.width) for c in STAGE_CHANNELS]
        self.conv1 = nn.Conv2d(spec.input_shape[0], widths[0], 3, padding=1, bias=bias)
        self.bn1 = norm_layer(widths[0], spec.batch_norm)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        in_channels = widths[0]
        for stage, (blocks, out_channels) in enumerate(zip(RESNET_BLOCKS[spec.arch], widths)):
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for b in range(blocks):
                stage_blocks.append(
                    BasicBlock(in_channels, out_channels, stride if b == 0 else 1, spec.batch_norm, bias)
                )
                in_channels = out_channels
            stages.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_channels, spec.num_classes, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.flatten(self.pool(out)))


def resnet_parameters(spec: ModelSpec) -> int:
    """The stem's, every block's two convs and shortcut's, and the classifier's parameters."""
    bias = spec.bias and not spec.batch_norm
    widths = [scaled(c, spec.width) for c in STAGE_CHANNELS]
    total = layer_parameters(spec.input_shape[0], widths[0], 3, bias, spec.batch_norm)
    in_channels = widths[0]
    for stage, (blocks, out) in enumerate(zip(RESNET_BLOCKS[spec.arch], widths)):
        for b in range(blocks):
            total += layer_parameters(in_channels, out, 3, bias, spec.batch_norm)
            total += layer_parameters(out, out, 3, bias, spec.batch_norm)
            if (stage > 0 and b == 0) or in_channels != out:
                total += layer_parameters(in_channels, out, 1, bias, spec.batch_norm)
            in_channels = out
    return total + layer_parameters(in_channels, spec.num_classes, 1, spec.bias, False)


def resnet_defaults(input_shape: Shape) -> dict[str, Any]:
    """BatchNorm without biases; width 1/4 on 8x8 inputs, so that it trains in seconds, else width 1."""
    return {"batch_norm": True, "bias": False, "width": 0.25 if input_shape[1] <= 8 else 1.0}


def block_names(spec: ModelSpec) -> list[str]:
    """The residual blocks of a ResNet spec, ``layer1.0`` to ``layer4.{n-1}``, in execution order."""
    return [f"layer{stage + 1}.{b}" for stage, count in enumerate(RESNET_BLOCKS[spec.arch]) for b in range(count)]


def resnet_spec(model: nn.Module, input_shape: Shape) -> ModelSpec:
    """The spec of a :class:`ResNet`: its blocks per stage, the width of its classifier's input, BatchNorm, bias."""
    blocks = tuple(len(getattr(model, f"layer{stage}")) for stage in range(1, 5))
    name = next((a for a, counts in RESNET_BLOCKS.items() if counts == blocks), None)
    if name is None:
        raise ArchitectureError(f"a ResNet with {blocks} blocks per stage is none of {', '.join(RESNET_BLOCKS)}")
    return ModelSpec(
        name,
        input_shape,
        model.linear.out_features,
        width=model.linear.in_features / 512,
        batch_norm=isinstance(model.bn1, nn.BatchNorm2d),
        bias=model.linear.bias is not None,
    )


ARCHITECTURES = tuple(
    Architecture(
        name,
        "resnet",
        ResNet,
        knobs=("width", "batch_norm", "bias"),
        estimate=resnet_parameters,
        defaults=resnet_defaults,
        label=width_label,
        stages=lambda spec: list(RESNET_BLOCKS[spec.arch]),
        resize=functools.partial(width_multiplier, build=ResNet),
        module=ResNet,
        read=resnet_spec,
    )
    for name in RESNET_BLOCKS
)
"""ResNet-18 and ResNet-34: their stages are their residual blocks per stage."""
