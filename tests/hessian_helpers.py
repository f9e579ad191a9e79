"""What the Hessian tests share: an exact configuration, the dense Hessian of a small network, and the tiny trained
MLP they take it of."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from analysis.curvature.hessian import ParameterSpace
from analysis.hessian_config import HessianConfig
from fusion.data import Dataset
from fusion.models import ModelSpec, build_model
from fusion.train import TrainConfig, train

EXACT = HessianConfig(samples=None, batch_size=64, tolerance=1e-7, iterations=400, probes=100, steps=60, runs=6)


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    """``∇²_θ mean CE`` over ``(x, y)`` in float64 (eval mode), over ``names`` (default: every parameter)."""
    model.eval()
    params = {n: p.detach().double() for n, p in model.named_parameters()}
    buffers = {n: b.double() if b.is_floating_point() else b for n, b in model.named_buffers()}
    names = names or list(params)
    space = ParameterSpace(tuple(names), tuple(tuple(params[n].shape) for n in names))

    def loss(flat: torch.Tensor) -> torch.Tensor:
        state = {**params, **buffers, **space.unflatten(flat)}
        return F.cross_entropy(functional_call(model, state, (x.double(),)), y)

    return torch.func.hessian(loss)(space.flatten({n: params[n] for n in names}))


@pytest.fixture(scope="module")
def tiny(digits: Dataset) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP 64-4-10 (310 parameters) trained briefly on digits, with 200 test examples."""
    model = build_model(ModelSpec("mlp", digits.input_shape, digits.num_classes, hidden=(4,)), seed=0)
    train(model, digits, TrainConfig(epochs=5, lr=1e-2, seed=0))
    return model.eval(), digits.x_test[:200], digits.y_test[:200]
