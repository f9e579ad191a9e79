"""What works on an architecture: the checks behind the README's support matrix, runnable on any model.

For two models of one architecture (random weights do; normalisation parameters and statistics are randomised first,
so that a BatchNorm or LayerNorm left out of a neuron group would change the function) and a batch of inputs; fused
attention projections are split first (:mod:`fusion.attention_layouts`), as fusion splits them, and the Hessian and the
landscape run on the models as they are:

- ``groups``: the neuron groups are found (:func:`fusion.groups.neuron_groups`);
- ``ot``, ``matching``: a copy of model A with every group's neurons shuffled, fused with A by OT fusion (weights,
  exact) and by weight matching, gives back A's function (max |logit difference| below ``tolerance`` times the
  logits' scale);
- ``transplant``: Neuron Transplantation's concatenation of A and B computes their ensemble, and pruning it back
  (:func:`fusion.methods.transplant.prune_to` with the method's default importance) gives exactly A's widths; where
  LayerNorm'd groups are shared rather than concatenated (a residual stream), the concatenation of A with itself
  computes A instead (the ensemble cannot hold there);
- ``intra``: Intra-Fusion to half of every group gives ``round(n / 2)`` neurons per group and finite logits;
- ``hessian``: the top Hessian eigenvalue of the cross-entropy on the inputs after :data:`HESSIAN_STEPS` Lanczos steps
  (its Ritz residual bound is reported beside it);
- ``landscape``: the loss along the line from A to B at 5 points is finite.

A check that a method refuses (a typed :class:`fusion.errors.FusionError`) reads "no" with the refusal's message; a
check whose property does not hold reads "no" with the measured difference. Nothing else is caught: any other
exception is a bug.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from analysis.hessian_config import HessianConfig
from analysis.hessian_spectrum import Hessian
from analysis.landscape import LandscapeConfig, linear_interpolation
from fusion.attention_layouts import split_attention_layers
from fusion.data import Dataset, Normalization
from fusion.errors import FusionError
from fusion.groups import CHANNEL_NORMS, NORMS, NeuronGroup, neuron_groups
from fusion.methods.transplant import TransplantOptions, concatenate, prune_to
from fusion.models import parameter_count
from fusion.records import Record
from fusion.registry import fuse
from fusion.surgery import group_sizes, permuted
from fusion.train import predict_logits

CHECKS = ("groups", "ot", "matching", "transplant", "intra", "hessian", "landscape")
HESSIAN_STEPS = 4
"""Lanczos steps of the ``hessian`` check: enough to show the products work and to bound λ1 (its Ritz residual)."""


@dataclass(frozen=True)
class SupportCheck(Record):
    """One cell of the matrix: whether ``check`` works, what was measured or why not, and its seconds."""

    check: str
    works: bool
    detail: str
    seconds: float

    @property
    def cell(self) -> str:
        return f"yes ({self.detail})" if self.works else f"no: {self.detail}"


@dataclass(frozen=True)
class SupportReport(Record):
    """Every check of one architecture."""

    arch: str
    parameters: int
    checks: tuple[SupportCheck, ...]

    def row(self) -> str:
        """The architecture's row of the README's Markdown table."""
        cells = [f"`{self.arch}`", f"{self.parameters / 1e6:.1f}M"] + [c.cell for c in self.checks]
        return "| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |"


def table_header() -> str:
    names = ["architecture", "parameters", *CHECKS]
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


class Violation(Exception):
    """A property that the check asserts did not hold; the matrix says "no" with the message."""


def randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    """Random affine parameters (and, for BatchNorm, running statistics) in every normalisation layer, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CHANNEL_NORMS) and module.weight is not None:
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.3)
            if isinstance(module, NORMS) and module.running_mean is not None:
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def same_function(expected: torch.Tensor, actual: torch.Tensor, tolerance: float) -> str:
    error = float((actual - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if not error <= tolerance * scale:
        raise Violation(f"logits differ by {error:.2g}")
    return f"{error:.0e}"


def run_check(name: str, body: Callable[[], str]) -> SupportCheck:
    started = time.perf_counter()
    try:
        detail, works = body(), True
    except (FusionError, Violation) as exc:
        detail, works = str(exc).splitlines()[0], False
    return SupportCheck(name, works, detail, round(time.perf_counter() - started, 2))


def support_report(
    arch: str,
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    tolerance: float = 1e-4,
    device: torch.device | None = None,
) -> SupportReport:
    """Run every check of the module docstring on ``model_a`` and ``model_b`` (modified in place: their
    normalisation layers are randomised) with ``inputs`` and integer ``labels``."""
    device = device or torch.device("cpu")
    native_a, native_b = randomize_norms(model_a, 1), randomize_norms(model_b, 2)
    a, b = split_attention_layers(native_a), split_attention_layers(native_b)
    logits_a = predict_logits(a, inputs, device)
    found: list[NeuronGroup] = []

    def groups() -> str:
        found.extend(neuron_groups(a, inputs[:1]))
        return f"{len(found)} groups"

    first = run_check("groups", groups)
    if not first.works:
        later = [SupportCheck(name, False, first.detail, 0.0) for name in CHECKS[1:]]
        return SupportReport(arch, parameter_count(a), (first, *later))

    shuffled: list[nn.Module] = []

    def back(method: str) -> Callable[[], str]:
        def body() -> str:
            if not shuffled:
                shuffled.append(permuted(a, found, seed=3))
            fused = fuse([a, shuffled[0]], method, inputs=inputs, device=device, recompute_bn=False)
            return same_function(logits_a, predict_logits(fused.model, inputs, device), tolerance)

        return body

    def transplant() -> str:
        shared = frozenset(g.name for g in found if g.normalized)
        if shared:
            wide = concatenate([a, a], found, shared)
            detail = "A with A = A " + same_function(logits_a, predict_logits(wide, inputs, device), tolerance)
        else:
            wide = concatenate([a, b], found)
            ensemble = (logits_a + predict_logits(b, inputs, device)) / 2
            detail = "ensemble " + same_function(ensemble, predict_logits(wide, inputs, device), tolerance)
        widths = group_sizes(a.state_dict(), found)
        pruned, _, _ = prune_to(wide, found, widths, TransplantOptions().importance, None, shared)
        if group_sizes(pruned.state_dict(), found) != widths:
            raise Violation("the transplanted model's widths differ from its parents'")
        return detail

    def intra() -> str:
        result = fuse([a], "intra", inputs=inputs, device=device, sparsity=0.5)
        widths = group_sizes(result.model.state_dict(), found)
        if widths != {g.name: round(g.size / 2) for g in found}:
            raise Violation("Intra-Fusion's widths are not half of every group")
        if not torch.isfinite(predict_logits(result.model, inputs, device)).all():
            raise Violation("Intra-Fusion's logits are not finite")
        return f"{parameter_count(result.model) / parameter_count(a):.0%} of the parameters"

    def hessian() -> str:
        config = HessianConfig(
            samples=len(inputs), batch_size=len(inputs), iterations=HESSIAN_STEPS, top_k=1, deflation=0, seed=0
        )
        top = Hessian(native_a, (inputs, labels), device=device, config=config).top_eigenvalues(1)
        return f"λ1 {top.eigenvalues[0]:.3g} ± {top.residuals[0]:.1g}"

    def landscape() -> str:
        data = Dataset("probe", inputs, labels, inputs, labels, int(labels.max()) + 1, Normalization((0.0,), (1.0,)))
        config = LandscapeConfig(resolution=5, batch_size=len(inputs))
        line = linear_interpolation(native_a, native_b, data, config, device)
        return f"barrier {line.train_barrier:.3g}"

    checks = [
        first,
        run_check("ot", back("ot")),
        run_check("matching", back("matching")),
        run_check("transplant", transplant),
        run_check("intra", intra),
        run_check("hessian", hessian),
        run_check("landscape", landscape),
    ]
    return SupportReport(arch, parameter_count(a), tuple(checks))
