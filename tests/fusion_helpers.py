"""Shared builders for the alignment and fusion tests: small zoo models with non-trivial BatchNorm statistics, and
neuron-permuted copies."""

from __future__ import annotations

import torch
from torch import nn

from fusion.groups import NORMS
from fusion.models import ModelSpec, build_model, default_spec

SMALL = {
    "mlp-bias": default_spec("mlp", (1, 8, 8), 10, hidden=(32, 16), bias=True),
    "cnn": default_spec("cnn", (1, 8, 8), 10, channels=(8, 12), hidden=(16,)),
    "vgg11-bn": default_spec("vgg11", (1, 8, 8), 10, batch_norm=True, width=0.125),
    "resnet18-bn": default_spec("resnet18", (1, 8, 8), 10, batch_norm=True, width=0.125),
}


def randomised(spec: ModelSpec, seed: int) -> nn.Module:
    """A model of ``spec`` whose BatchNorm affine parameters and running statistics are random, so that a
    BatchNorm member missing from a group would change the function."""
    return randomise_norms(build_model(spec, seed=seed), seed)


def randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    """``model`` in eval mode with random BatchNorm affine parameters and running statistics (drawn with
    ``seed + 1000``)."""
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, NORMS):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.3)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def max_logit_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())
