"""Unstructured magnitude pruning: the smallest weights set to zero, the architecture unchanged (Han et al., "Learning
both Weights and Connections for Efficient Neural Networks", NeurIPS 2015; the pruning the otfusion generalization
study applies to its parents besides structured pruning).

Every weight of a convolution or linear layer (biases, normalisation parameters and the output layer's weights
included only if ``scope`` says so) is a candidate; ``sparsity`` of them, by ``|w|`` (L1 magnitude), become zero:
within each layer (``scope="layer"``, ``torch.nn.utils.prune.l1_unstructured`` per layer), or over all layers at once
(``"global"``). The mask is not kept as a parameter: the zeros are written into the weights, so a fine-tune may
revive them (the study retrains the fused model freely).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fusion.errors import ConfigError
from fusion.methods.base import Context, Details, MethodOutput
from fusion.options import Options
from fusion.problems import Checks
from fusion.surgery import with_state


@dataclass(frozen=True)
class SparsifyOptions(Options):
    """Unstructured L1 pruning: the fraction of weights zeroed, per layer or over the whole network."""

    sparsity: float = field(default=0.5, metadata={"help": "fraction of the weights set to zero"})
    scope: Literal["layer", "global"] = field(
        default="layer", metadata={"help": "the smallest weights of each layer, or of the whole network"}
    )

    def check(self, checks: Checks) -> None:
        checks.number("sparsity", self.sparsity, 0, 1, above=True, below=True)


@dataclass(frozen=True)
class SparsifyDetails(Details):
    """The fraction of zero weights in each pruned layer (by state name) and over all of them."""

    zero_fraction: dict[str, float]
    total_zero_fraction: float


def prunable_weights(model: nn.Module) -> list[str]:
    """State names of the weights of every convolution and linear layer."""
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.weight is not None
    ]


def zero_smallest(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """``weights`` with ``round(sparsity * n)`` entries of least ``|w|`` set to zero, ``n`` counted per tensor
    (``layer``) or over all of them (``global``); ties broken by position, so exactly that many are zero."""
    groups = [list(weights)] if scope == "global" else [[name] for name in weights]
    result = {}
    for names in groups:
        flat = torch.cat([weights[n].reshape(-1) for n in names])
        count = round(sparsity * flat.numel())
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        if count:
            keep[torch.topk(flat.abs(), count, largest=False, sorted=False).indices] = False
        start = 0
        for name in names:
            size = weights[name].numel()
            result[name] = weights[name] * keep[start : start + size].view_as(weights[name]).to(weights[name].dtype)
            start += size
    return result


def run_sparsify(models: Sequence[nn.Module], options: SparsifyOptions, context: Context) -> MethodOutput:
    """Unstructured pruning of one model (see the module docstring); its details are a :class:`SparsifyDetails`."""
    model = models[0]
    state = {k: v.detach() for k, v in model.state_dict().items()}
    names = prunable_weights(model)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no convolution or linear weights to prune")
    zeroed = zero_smallest({n: state[n] for n in names}, options.sparsity, options.scope)
    pruned = with_state(model, {**state, **zeroed}).eval()
    fractions = {n: float((zeroed[n] == 0).float().mean()) for n in names}
    total = sum(int((zeroed[n] == 0).sum()) for n in names) / sum(zeroed[n].numel() for n in names)
    return MethodOutput(pruned, [None], details=SparsifyDetails(fractions, total))
