"""The seed repositories' own architectures, with their parameter names, so that their checkpoints load as they are.

otfusion (Singh & Jaggi 2020, github.com/sidak/otfusion) ships ``mnist_models.zip``: two ``mlpnet`` MLPs
784-400-200-100-10 without biases, named ``fc1``...``fc4``, saved as ``{"model_state_dict": ..., "args": ...,
"test_accuracy": ...}``. Its CIFAR ``vgg11_nobias`` and ``resnet18_nobias_nobn`` carry the zoo's own parameter names
(``features.N``, ``classifier``; ``conv1``, ``layerS.B.convK``, ``shortcut.0``, ``linear``), so they are zoo specs
(:data:`ZOO_ALIASES`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fusion.errors import ArchitectureError

MLPNET_HIDDEN = (400, 200, 100)


class OTFusionMlpNet(nn.Module):
    """otfusion's ``MlpNet``: ``x -> fc4(relu(fc3(relu(fc2(relu(fc1(flatten(x))))))))``, no biases.

    Returns logits; the reference returns their ``log_softmax``, which changes neither the predicted class nor the
    cross-entropy."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        widths = (math.prod(input_shape), *MLPNET_HIDDEN, num_classes)
        for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            self.add_module(f"fc{index}", nn.Linear(fan_in, fan_out, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        x = torch.relu(self.fc3(x))
        return self.fc4(x)


SEED_MODELS = {"otfusion:mlpnet": OTFusionMlpNet}
"""The seed architectures that are modules of their own, by ``arch``."""

ZOO_ALIASES: dict[str, dict[str, Any]] = {
    "otfusion:vgg11_nobias": {"arch": "vgg11", "bias": False, "batch_norm": False, "width": 1.0},
    "otfusion:resnet18_nobias_nobn": {"arch": "resnet18", "bias": False, "batch_norm": False, "width": 1.0},
}
"""The seed architectures that are zoo specs, by the name their repository gives them."""


def check_seed_arch(arch: str) -> None:
    """Refuse a seed-repository name that is not a module of its own; the zoo's aliases name zoo specs
    (:func:`fusion.models.default_spec` and ``--arch`` resolve them), never a stored ``arch``."""
    if arch in ZOO_ALIASES:
        raise ArchitectureError(
            f"{arch} is the zoo's {ZOO_ALIASES[arch]['arch']} without bias or BatchNorm: build it with "
            f"default_spec({arch!r}, ...) or --arch {arch}"
        )
    if arch not in SEED_MODELS:
        known = ", ".join([*SEED_MODELS, *ZOO_ALIASES])
        raise ArchitectureError(f"unknown seed-repository architecture {arch!r}; known: {known}")


def build_seed_model(arch: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    check_seed_arch(arch)
    return SEED_MODELS[arch](input_shape, num_classes)
