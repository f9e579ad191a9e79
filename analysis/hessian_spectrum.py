"""The Hessian of a model's loss and the estimates of its spectrum, in one object as PyHessian has it (Yao et al. 2020,
"PyHessian: Neural Networks Through the Lens of the Hessian"): ``Hessian(model, data).top_eigenvalues(k)``,
``.trace()``, ``.density()``.

The operator is :class:`~analysis.curvature.hessian.HessianOperator`; the algorithms are those of
:mod:`analysis.curvature`, which take any operator and explicit numbers. :class:`Hessian` is the one place where a
:class:`HessianConfig` becomes those numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from analysis import AnalysisError
from analysis.curvature.hessian import HessianOperator, Loss, ParameterSpace, check_data, cross_entropy_loss
from analysis.curvature.hutchinson import TraceEstimate, hutchinson_trace
from analysis.curvature.lanczos import Lanczos, lanczos_top_eigenvalues
from analysis.curvature.slq import EigenvalueDensity, slq_density
from analysis.hessian_config import HessianConfig
from fusion.progress import Progress, no_progress
from fusion.records import Record, RecordError, from_json, to_json


def sample_data(data: tuple[torch.Tensor, torch.Tensor], config: HessianConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``config.samples`` examples of ``data`` drawn without replacement with ``config.seed`` (all if fewer)."""
    check_data(data)
    inputs, targets = data
    if config.samples is None or config.samples >= len(inputs):
        return inputs, targets
    index = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(config.seed))[: config.samples]
    return inputs[index], targets[index]


@dataclass(frozen=True, eq=False)
class TopEigenvalues(Record):
    """The ``k`` largest eigenvalues ``λ_1 ≥ ... ≥ λ_k`` of the Hessian, Ritz residual bounds
    ``||H v_i - λ_i v_i||`` (estimates), the unit eigenvectors ``(k, n)`` over ``space`` (``None`` when read back from a
    stored result), the Lanczos steps (= Hessian-vector products) used, and whether the tolerance was met."""

    eigenvalues: np.ndarray
    residuals: np.ndarray
    eigenvectors: torch.Tensor | None = field(metadata={"stored": False})
    space: ParameterSpace
    iterations: int
    converged: bool
    seconds: float

    def direction(self, index: int = 0) -> dict[str, torch.Tensor]:
        """Eigenvector ``index`` as ``{parameter name: tensor}``."""
        if self.eigenvectors is None:
            raise AnalysisError("this result was read back without its eigenvectors; recompute it to get directions")
        return self.space.unflatten(self.eigenvectors[index])

    def to_dict(self) -> dict[str, Any]:
        """The space stored flat, as ``parameters`` (names) and ``shapes``."""
        stored = to_json(self)
        space = stored.pop("space")
        return {**stored, "parameters": space["names"], "shapes": space["shapes"]}

    @classmethod
    def from_dict(cls, data: Any) -> TopEigenvalues:
        if not isinstance(data, Mapping):
            raise RecordError(f"TopEigenvalues: expected an object, got {type(data).__name__}")
        space = {"names": data.get("parameters"), "shapes": data.get("shapes")}
        return from_json(cls, {**data, "space": space})


@dataclass(frozen=True)
class LayerHessian(Record):
    """One layer's diagonal Hessian block: its parameters, top eigenvalue, and trace with its error bar (``None``
    for a single probe)."""

    layer: str
    parameters: tuple[str, ...]
    top_eigenvalue: float
    trace: float
    trace_error: float | None


def layer_parameters(model: nn.Module) -> dict[str, list[str]]:
    """``{module name: its own trainable parameter names}`` for every module holding parameters, in model order."""
    layers: dict[str, list[str]] = {}
    for module_name, module in model.named_modules():
        names = [
            f"{module_name}.{n}" if module_name else n
            for n, p in module.named_parameters(recurse=False)
            if p.requires_grad
        ]
        if names:
            layers[module_name] = names
    return layers


class Hessian:
    """The Hessian ``H = ∇²_θ L(θ)`` of the mean ``loss`` of ``model`` over ``config.samples`` examples of
    ``data = (inputs, targets)`` drawn with ``config.seed`` (:func:`sample_data`), model in eval mode, on ``device``,
    and the estimates of its spectrum (Yao et al. 2020, PyHessian):

    - :meth:`top_eigenvalues`: Lanczos (:func:`~analysis.curvature.lanczos.lanczos_top_eigenvalues`) with at most
      ``config.iterations`` steps, at least ``config.deflation``, to the relative error ``config.tolerance``;
    - :meth:`trace`: Hutchinson deflated by a Krylov basis (:func:`~analysis.curvature.hutchinson.hutchinson_trace`),
      at most ``config.probes`` probes to the relative error bar ``config.trace_tolerance``. The basis is that of the
      last :meth:`top_eigenvalues` call, which the trace takes over (at no extra product), or else a new run of
      ``config.deflation`` steps;
    - :meth:`density`: stochastic Lanczos quadrature (:func:`~analysis.curvature.slq.slq_density`), ``config.runs``
      runs of ``config.steps`` steps;
    - :meth:`layers`: the top eigenvalue and trace of every layer's diagonal block.

    ``parameters`` restricts ``θ`` to some trainable parameters by name (a diagonal block). The operator is
    :attr:`operator` (:class:`~analysis.curvature.hessian.HessianOperator`, batches of ``config.batch_size``); its
    sample is :attr:`data`. Raises what the operator raises (:class:`AnalysisError`, :class:`DatasetError`,
    :class:`NonFiniteLoss`).

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> data = (torch.randn(16, 3), torch.randint(0, 2, (16,)))
    >>> hessian = Hessian(model, data, device=torch.device("cpu"))
    >>> top = hessian.top_eigenvalues(2)  # the dense Hessian's: 0.8932, 0.4162
    >>> top.eigenvalues.round(4).tolist(), top.eigenvectors.shape
    ([0.8932, 0.4162], torch.Size([2, 26]))
    >>> round(hessian.trace().mean, 2)  # the dense Hessian's: 1.1137
    1.11
    >>> density = hessian.density()
    >>> round(float(np.trapezoid(density.density, density.grid)), 4)
    1.0
    """

    def __init__(
        self,
        model: nn.Module,
        data: tuple[torch.Tensor, torch.Tensor],
        loss: Loss = cross_entropy_loss,
        device: torch.device | None = None,
        config: HessianConfig = HessianConfig(),
        parameters: Sequence[str] | None = None,
    ) -> None:
        self.model = model
        self.loss = loss
        self.config = config
        self.operator = HessianOperator(
            model,
            sample_data(data, config),
            loss,
            device,
            parameters,
            config.batch_size,
            config.block_size,
            config.cache_graph,
        )
        self.krylov: Lanczos | None = None

    @property
    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The sample the Hessian is taken over."""
        return self.operator.data

    @property
    def device(self) -> torch.device:
        return self.operator.device

    def top_eigenvalues(self, k: int | None = None, progress: Progress = no_progress) -> TopEigenvalues:
        """The ``k`` (default ``config.top_k``) largest eigenvalues and their unit eigenvectors ``(k, n)``; keeps the
        Lanczos run for :meth:`trace`. Raises :class:`AnalysisError` for ``k`` above ``n``."""
        config = self.config
        found = lanczos_top_eigenvalues(
            self.operator,
            config.top_k if k is None else k,
            config.iterations,
            config.tolerance,
            config.seed,
            config.deflation,
            progress,
        )
        self.krylov = found.run
        return TopEigenvalues(
            found.eigenvalues,
            found.residuals,
            found.eigenvectors.T.cpu(),
            self.operator.space,
            found.steps,
            found.converged,
            found.seconds,
        )

    def trace(self, progress: Progress = no_progress) -> TraceEstimate:
        """``tr H`` by deflated Hutchinson, deflated by the Lanczos basis the last :meth:`top_eigenvalues` left (and
        released here) or by a new run of ``config.deflation`` steps."""
        config = self.config
        krylov, self.krylov = self.krylov, None
        return hutchinson_trace(
            self.operator,
            config.probes,
            config.trace_tolerance,
            config.seed,
            config.block_size,
            config.deflation,
            krylov,
            progress,
        )

    def density(self, progress: Progress = no_progress) -> EigenvalueDensity:
        """The eigenvalue density of ``H`` by stochastic Lanczos quadrature, on ``config.bins`` points."""
        config = self.config
        return slq_density(
            self.operator,
            config.steps,
            config.runs,
            config.bins,
            config.kernel_width,
            config.reorthogonalize,
            config.seed,
            progress,
        )

    def layers(self, progress: Progress = no_progress) -> list[LayerHessian]:
        """Top eigenvalue and trace of each layer's block ``H_ll = ∇²_{θ_l} L`` (other parameters held fixed, on this
        Hessian's sample); progress after every block of Hessian-vector products, so that a cancelled job stops
        within a few."""
        blocks = layer_parameters(self.model)
        results = []
        for index, (layer, names) in enumerate(blocks.items()):
            block = Hessian(self.model, self.data, self.loss, self.device, self.config, names)

            def report(done, total, message, index=index, layer=layer):
                return progress(index, len(blocks), f"layer {layer}: {message}")

            top = block.top_eigenvalues(1, report)
            trace = block.trace(report)
            results.append(LayerHessian(layer, tuple(names), float(top.eigenvalues[0]), trace.mean, trace.error))
            progress(index + 1, len(blocks), f"layer {layer}")
        return results
