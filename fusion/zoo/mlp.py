"""The zoo's MLP: ``Flatten -> [Linear -> (BN) -> ReLU] * len(hidden) -> Linear``, sized by its hidden widths."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fusion.zoo.layers import classifier_head, head_parameters, layer_widths
from fusion.zoo.spec import Architecture, ModelSpec, Shape


class MLP(nn.Module):
    """``Flatten -> [Linear -> (BN) -> ReLU] * len(hidden) -> Linear`` over ``C H W`` inputs."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.layers = classifier_head(math.prod(spec.input_shape), spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def mlp_spec(model: nn.Module, input_shape: Shape) -> ModelSpec:
    """The spec of an :class:`MLP`: its hidden widths, BatchNorm and biases read from its layers."""
    linears = [m for m in model.layers if isinstance(m, nn.Linear)]
    return ModelSpec(
        "mlp",
        input_shape,
        linears[-1].out_features,
        hidden=tuple(m.out_features for m in linears[:-1]),
        batch_norm=any(isinstance(m, nn.BatchNorm1d) for m in model.layers),
        bias=linears[0].bias is not None,
    )


def mlp_defaults(input_shape: Shape) -> dict[str, Any]:
    """Two hidden layers, 128-64."""
    return {"hidden": (128, 64)}


def hidden_label(spec: ModelSpec) -> str:
    """``128-64``, or ``linear`` without hidden layers."""
    return "-".join(map(str, spec.hidden)) or "linear"


def hidden_widths(spec: ModelSpec, model: nn.Module) -> dict[str, Any]:
    """The hidden widths of ``model``, every linear layer's but the last."""
    return {"hidden": tuple(layer_widths(model)[:-1])}


ARCHITECTURES = (
    Architecture(
        "mlp",
        "mlp",
        MLP,
        knobs=("hidden", "batch_norm", "bias"),
        estimate=lambda spec: head_parameters(math.prod(spec.input_shape), spec),
        defaults=mlp_defaults,
        label=hidden_label,
        stages=lambda spec: [len(spec.hidden)],
        resize=hidden_widths,
        module=MLP,
        read=mlp_spec,
    ),
)
"""The MLP: one stage of ``len(hidden)`` layers."""
