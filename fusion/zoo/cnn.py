"""The zoo's small CNN: a 3x3 conv stack with a 2x2 max-pool after each conv, then the classifier head
(:func:`fusion.zoo.layers.classifier_head`) over the flattened map; sized by its channels and hidden widths."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fusion.errors import ArchitectureError
from fusion.zoo.layers import (
    check_square,
    classifier_head,
    conv_stack,
    head_parameters,
    layer_widths,
    stack_parameters,
)
from fusion.zoo.spec import Architecture, ModelSpec, Shape


def cnn_plan(spec: ModelSpec) -> tuple[int | str, ...]:
    """Each conv's channels followed by a max-pool ("M")."""
    return tuple(x for c in spec.channels for x in (c, "M"))


class CNN(nn.Module):
    """A small CNN: a conv stack (one max-pool after each conv), flatten, hidden linear layers, classifier."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.features, channels, size = conv_stack(spec.input_shape[0], spec.input_shape[1], cnn_plan(spec), spec)
        self.classifier = classifier_head(channels * size * size, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cnn_parameters(spec: ModelSpec) -> int:
    """The conv stack's parameters and the head's over its flattened map."""
    total, channels, size = stack_parameters(spec.input_shape[0], spec.input_shape[1], cnn_plan(spec), spec)
    return total + head_parameters(channels * size * size, spec)


def check_cnn(spec: ModelSpec) -> None:
    """Square inputs and at least one conv layer."""
    check_square(spec)
    if not spec.channels:
        raise ArchitectureError("a cnn needs at least one conv layer: give channels, e.g. (16, 32)")


def cnn_defaults(input_shape: Shape) -> dict[str, Any]:
    """Convs of 16 and 32 channels, one hidden layer of 64."""
    return {"channels": (16, 32), "hidden": (64,)}


def cnn_label(spec: ModelSpec) -> str:
    """``c16-32-h64``: the conv channels, then the hidden widths."""
    hidden = "-h" + "-".join(map(str, spec.hidden)) if spec.hidden else ""
    return "c" + "-".join(map(str, spec.channels)) + hidden


def cnn_widths(spec: ModelSpec, model: nn.Module) -> dict[str, Any]:
    """The channels of ``model``'s convs and the widths of its hidden linear layers."""
    widths = layer_widths(model)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return {"channels": tuple(widths[:convs]), "hidden": tuple(widths[convs:-1])}


ARCHITECTURES = (
    Architecture(
        "cnn",
        "cnn",
        CNN,
        knobs=("channels", "hidden", "batch_norm", "bias"),
        check=check_cnn,
        estimate=cnn_parameters,
        defaults=cnn_defaults,
        label=cnn_label,
        resize=cnn_widths,
    ),
)
"""The CNN (no stages: CLAFusion balances MLPs, VGGs and ResNets)."""
