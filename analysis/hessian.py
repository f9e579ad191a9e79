"""The Hessian of the loss: top eigenvalues, trace, eigenvalue density and the loss along eigenvectors.

The Hessian is that of the data-weighted mean loss over ``N`` examples split into batches ``B_b``:
``H = ∇²_θ L(θ)``, ``L(θ) = Σ_b (|B_b| / N) ℓ(f(x_b; θ), (x_b, y_b))``, with ``ℓ`` a batch-mean loss (cross-entropy by
default) and the model in eval mode (BatchNorm uses its running statistics). It is never formed: every algorithm
calls Hessian-vector products ``H V`` for a block of vectors ``V: (b, n)``, ``n`` the number of parameters analysed.

Hessian-vector products are double backward (Pearlmutter 1994): ``H v = ∇_θ (∇_θ ℓ_b · v)``, with each batch's
gradient ``∇_θ ℓ_b`` computed once with its graph (``create_graph``, through ``torch.func.functional_call``) and kept,
so a product is one backward pass through that graph (``HessianConfig.cache_graph``; memory grows with the samples).
PyHessian keeps the graph only for a single batch and rebuilds forward and backward per product otherwise; it also
leaks it through ``backward(create_graph=True)`` into ``.grad``, which ``torch.autograd.grad`` avoids. Chosen by
measurement on this machine's CPU (2 threads, shared with other jobs; ``bench/bench_hessian.py``, methods interleaved),
seconds per vector relative to one forward+backward pass:

=====================================================  ===================  ========================
method                                                 digits CNN, b=128    ResNet-18 32x32, b=64
=====================================================  ===================  ========================
double backward, gradient graph rebuilt per product    1.87x                2.80x
double backward, gradient graph kept (ours)            1.02x                1.59x
the same, 4 vectors per pass (``is_grads_batched``)    1.30x                1.77x
forward-over-reverse (``jvp`` of ``grad``)             5.63x                3.65x
the same, 4 vectors per call (``vmap``)                1.96x                3.07x
linearised (``torch.func.linearize``), 1 vector        1.21x                2.70x
linearised, 4 vectors                                  1.58x                4.48x
=====================================================  ===================  ========================

Batching vectors did not pay on this CPU, so ``block_size`` defaults to 1 (it may on a GPU).

Algorithms (Yao et al. 2020, "PyHessian: Neural Networks Through the Lens of the Hessian"):

- top-k eigenvalues: Lanczos with full reorthogonalisation from a seeded Gaussian start, stopped when the estimated
  error of each of the top k Ritz values is at most ``tolerance * |θ_1|``. A Ritz pair ``(θ_i, y_i)`` with residual
  ``r_i = ||H y_i - θ_i y_i|| = β_m |s_{m,i}|`` lies within ``r_i`` of an eigenvalue, and within ``r_i² / δ_i`` when
  the rest of the spectrum is ``δ_i`` away (Parlett, "The Symmetric Eigenvalue Problem", Thm 11.7.1); ``δ_i`` is
  estimated by the distance to the nearest other Ritz value. PyHessian uses power iteration with deflation and stops
  when successive estimates change by less than ``tol``, which at ``tol = 1e-3`` left its ``λ_1`` 0.2% from ours;
- trace: Hutchinson's estimator (Hutchinson 1989; Avron & Toledo 2011) after deflation by a Krylov basis (Gambhir,
  Stathopoulos & Orginos 2017; Meyer et al. 2021, "Hutch++"): with ``Q`` the ``m`` orthonormal Lanczos vectors of
  the top-eigenvalue run, ``tr H = tr(Qᵀ H Q) + tr(P H P)`` exactly for ``P = I - Q Qᵀ``, where ``Qᵀ H Q = T_m``
  costs nothing more, and the remainder is estimated from Rademacher probes, ``tr H ≈ tr T_m + (1/P) Σ_p
  (P z_p)ᵀ H (P z_p)``, with the error bar ``std / sqrt(P)`` over probes. A trained network's Hessian has a few large
  outlying eigenvalues that dominate the probes' variance and that the Krylov space captures: on the trained digits
  CNN (13,706 parameters, 1,000 examples) 20 Lanczos vectors cut the per-probe standard deviation from 105 to 5.5
  (trace 220), so 10 probes give a 0.25% error bar where plain Hutchinson needs about 3,700. At a random
  initialisation the spectrum has no outliers and deflation changes little (variance 1.2x lower). The probes stop
  once the error bar is at most ``trace_tolerance * |trace|`` (after at least ``MIN_TRACE_PROBES``);
- eigenvalue density: stochastic Lanczos quadrature (Ghorbani et al. 2019, "An Investigation into Neural Net
  Optimization via Hessian Eigenvalue Density"; Lin, Saad & Yang 2016): from a normalised Rademacher start ``v``,
  ``m`` Lanczos steps give ``T_m = S Θ Sᵀ``; the density ``φ(t) = Σ_j S_{1j}² g_σ(t - θ_j)`` with a Gaussian kernel
  ``g_σ`` is averaged over independent runs (computed together, one block of vectors per step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from analysis import AnalysisError, NonFiniteLoss
from analysis.arrays import json_array, numpy_array
from analysis.cost import CostEstimate, SlowAnalysisWarning, check_estimate, check_units, saved_bytes
from analysis.landscape import auto_points_per_call, evaluate_combinations, filter_normalized_direction
from analysis.states import eval_mode, float_state
from fusion.device import default_device
from fusion.errors import ConfigError, DatasetError
from fusion.progress import Progress, no_progress
from fusion.seeds import check_seed

Loss = Callable[[torch.Tensor, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
"""``loss(outputs, (inputs, targets))``: a scalar, the mean over the batch."""

PERTURBATION_TS = tuple(float(t) for t in np.linspace(-0.5, 0.5, 21))
"""The otfusion generalization study's ``t`` grid for the loss along ``θ + t v``."""


def cross_entropy_loss(outputs: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(outputs, batch[1])


@dataclass(frozen=True)
class HessianConfig:
    """Data, iteration counts and seeds of the Hessian analyses.

    ``samples`` examples (``None``: all given) drawn with ``seed``, in batches of ``batch_size`` (the otfusion study
    used test batches of 1000). Top-k: at most ``iterations`` Lanczos steps, stopping at relative residual
    ``tolerance`` (PyHessian's ``maxIter=100``, ``tol=1e-3``), ``top_k`` eigenvalues (3 in the study). Trace: at most
    ``probes`` Rademacher probes (PyHessian's ``maxIter=100``) after deflation by ``deflation`` Lanczos vectors,
    stopping at a relative error bar ``trace_tolerance`` (0: every probe). Density: ``runs`` SLQ runs of ``steps``
    Lanczos steps (PyHessian's ``n_v``, ``iter=100``), a Gaussian kernel of width ``kernel_width`` times the
    spectrum's range, on a grid of ``bins`` points, with full reorthogonalisation when ``reorthogonalize`` (memory
    ``runs * steps * n`` floats). ``cache_graph`` computes each batch's gradient graph once and keeps it for every
    product (memory grows with ``samples``); without it every product recomputes it. ``block_size`` vectors share one
    backward pass.
    ``layers`` adds each layer's diagonal block to :func:`hessian_report` (:func:`layerwise_hessian`).
    Limits, checked before any work (:func:`check_hessian_cost`): at most ``max_products`` Hessian-vector products,
    ``max_seconds`` estimated seconds and ``max_memory_gb`` estimated GiB; above ``warn_seconds`` a
    :class:`SlowHessianWarning` is issued.
    """

    samples: int | None = field(default=1000, metadata={"help": "examples the loss is averaged over (all when unset)"})
    batch_size: int = field(default=1000, metadata={"help": "examples per forward/backward pass"})
    iterations: int = field(default=100, metadata={"help": "maximum Lanczos steps for the top eigenvalues"})
    tolerance: float = field(
        default=1e-3, metadata={"help": "top-k stop: estimated eigenvalue error relative to |λ_1|"}
    )
    top_k: int = field(default=3, metadata={"help": "number of top eigenvalues"})
    probes: int = field(default=100, metadata={"help": "maximum Hutchinson probes for the trace"})
    deflation: int = field(
        default=20, metadata={"help": "Lanczos vectors deflated from the trace's probes (0: plain Hutchinson)"}
    )
    trace_tolerance: float = field(
        default=1e-2, metadata={"help": "trace stop: error bar relative to |trace| (0: every probe)"}
    )
    steps: int = field(default=100, metadata={"help": "Lanczos steps per density run"})
    runs: int = field(default=4, metadata={"help": "independent density (SLQ) runs"})
    bins: int = field(default=1000, metadata={"help": "grid points of the density"})
    kernel_width: float = field(
        default=0.01, metadata={"help": "Gaussian kernel width, relative to the spectrum's range"}
    )
    reorthogonalize: bool = field(
        default=True, metadata={"help": "fully reorthogonalise the density's Lanczos vectors"}
    )
    cache_graph: bool = field(default=True, metadata={"help": "keep each batch's gradient graph for all products"})
    block_size: int = field(default=1, metadata={"help": "vectors per Hessian-vector backward pass"})
    seed: int = field(default=0, metadata={"help": "seed of the sample, start vectors and probes"})
    layers: bool = field(
        default=False, metadata={"help": "also each layer's top eigenvalue and trace (one analysis per layer)"}
    )
    max_products: int = field(default=10_000, metadata={"help": "refuse runs needing more Hessian-vector products"})
    max_seconds: float = field(default=6 * 3600.0, metadata={"help": "refuse runs estimated to take longer (s)"})
    warn_seconds: float = field(default=600.0, metadata={"help": "warn for runs estimated to take longer (s)"})
    max_memory_gb: float = field(default=16.0, metadata={"help": "refuse runs estimated to hold more memory (GiB)"})

    def __post_init__(self) -> None:
        if self.samples is not None and (not isinstance(self.samples, int) or self.samples < 1):
            raise ConfigError(f"samples must be a positive integer or None (all), got {self.samples!r}")
        for name, low, high in (
            ("batch_size", 1, 65536),
            ("iterations", 1, 100_000),
            ("top_k", 1, 10_000),
            ("probes", 1, 1_000_000),
            ("deflation", 0, 100_000),
            ("steps", 1, 100_000),
            ("runs", 1, 10_000),
            ("bins", 50, 1_000_000),
            ("block_size", 1, 4096),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}")
        if self.iterations < self.top_k:
            raise ConfigError(f"iterations ({self.iterations}) must be at least top_k ({self.top_k})")
        if not (isinstance(self.tolerance, (int, float)) and 0 < self.tolerance < 1):
            raise ConfigError(f"tolerance must be in (0, 1), got {self.tolerance!r}")
        if not (isinstance(self.trace_tolerance, (int, float)) and 0 <= self.trace_tolerance < 1):
            raise ConfigError(f"trace_tolerance must be in [0, 1), got {self.trace_tolerance!r}")
        if not (isinstance(self.kernel_width, (int, float)) and 0 < self.kernel_width <= 1):
            raise ConfigError(f"kernel_width must be in (0, 1], got {self.kernel_width!r}")
        check_seed(self.seed)
        if not isinstance(self.max_products, int) or self.max_products < 1:
            raise ConfigError(f"max_products must be a positive integer, got {self.max_products!r}")
        for name in ("max_seconds", "warn_seconds", "max_memory_gb"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ParameterSpace:
    """The analysed parameters in a fixed order; flat vectors ``(..., n)`` concatenate them flattened."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{name: (..., *shape)}`` to ``(..., n)``."""
        lead = tensors[self.names[0]].shape[: tensors[self.names[0]].dim() - len(self.shapes[0])]
        return torch.cat([tensors[name].reshape(*lead, -1) for name in self.names], dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(..., n)`` to ``{name: (..., *shape)}`` (views)."""
        lead = flat.shape[:-1]
        return {
            name: part.reshape(*lead, *shape)
            for name, shape, part in zip(self.names, self.shapes, flat.split(self.sizes, dim=-1))
        }


def sample_data(data: tuple[torch.Tensor, torch.Tensor], config: HessianConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``config.samples`` examples of ``data`` drawn without replacement with ``config.seed`` (all if fewer)."""
    inputs, targets = data
    if len(inputs) == 0:
        raise DatasetError("the Hessian needs data, got an empty dataset")
    if len(inputs) != len(targets):
        raise DatasetError(f"inputs and targets differ in length: {len(inputs)} != {len(targets)}")
    if config.samples is None or config.samples >= len(inputs):
        return inputs, targets
    index = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(config.seed))[: config.samples]
    return inputs[index], targets[index]


class HessianOperator:
    """``V ↦ H V`` for ``V: (b, n)`` on ``device``: the Hessian of ``loss`` over ``config.samples`` examples of ``data``
    in batches of ``config.batch_size``, model in eval mode.

    ``parameters`` restricts ``θ`` to some trainable parameters (by name; the others are held fixed), giving the
    diagonal block of the Hessian for one layer or group. ``products`` counts the vectors multiplied so far.

    Raises :class:`AnalysisError` for a model without trainable parameters or unknown names, :class:`DatasetError`
    for empty data and :class:`NonFiniteLoss` when the loss at ``θ`` is not finite.
    """

    def __init__(
        self,
        model: nn.Module,
        data: tuple[torch.Tensor, torch.Tensor],
        config: HessianConfig = HessianConfig(),
        device: torch.device | None = None,
        loss: Loss = cross_entropy_loss,
        parameters: Sequence[str] | None = None,
    ) -> None:
        self.device = device or default_device()
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise AnalysisError(f"{type(model).__name__} has no trainable parameters: its Hessian is empty")
        names = list(trainable) if parameters is None else list(parameters)
        unknown = [name for name in names if name not in trainable]
        if unknown or not names:
            raise AnalysisError(
                f"parameters must be names of trainable parameters ({', '.join(list(trainable)[:4])}...), "
                f"got {unknown or names}"
            )
        self.model = model
        self.loss = loss
        self.config = config
        self.data = sample_data(data, config)
        self.space = ParameterSpace(tuple(names), tuple(tuple(trainable[n].shape) for n in names))
        self.params = {n: trainable[n].detach().to(self.device).requires_grad_() for n in names}
        self.fixed = {k: v.detach().to(self.device) for k, v in model.state_dict().items() if k not in self.params}
        inputs, targets = self.data
        self.batches = [
            (inputs[i : i + config.batch_size].to(self.device), targets[i : i + config.batch_size].to(self.device))
            for i in range(0, len(inputs), config.batch_size)
        ]
        self.graphs: dict[int, tuple[torch.Tensor, ...]] = {}
        self.products = 0
        self.loss_value()

    @property
    def size(self) -> int:
        return self.space.size

    def batch_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(functional_call(self.model, {**params, **self.fixed}, (x,)), (x, y))

    @torch.no_grad()
    def loss_value(self) -> float:
        """``L(θ)``; raises :class:`NonFiniteLoss` when it is NaN or infinite."""
        with eval_mode(self.model):
            value = sum(float(self.batch_loss(self.params, x, y)) * len(x) for x, y in self.batches) / len(self.data[0])
        if not math.isfinite(value):
            raise NonFiniteLoss(f"the loss at the analysed parameters is {value}; the Hessian is undefined there")
        return value

    def gradient(self, index: int) -> tuple[torch.Tensor, ...]:
        """``∇_θ ℓ_b`` of batch ``index`` with its graph (``create_graph``), kept when ``config.cache_graph``."""
        if index in self.graphs:
            return self.graphs[index]
        x, y = self.batches[index]
        with torch.enable_grad(), eval_mode(self.model):
            loss = self.batch_loss(self.params, x, y)
            gradient = torch.autograd.grad(loss, list(self.params.values()), create_graph=True, materialize_grads=True)
        if self.config.cache_graph:
            self.graphs[index] = gradient
        return gradient

    def matmul(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H V = Σ_b (|B_b| / N) ∇_θ (∇_θ ℓ_b · v)`` for ``V: (b, n)``, ``config.block_size`` vectors per backward
        pass (``is_grads_batched``); returns ``(b, n)``."""
        vectors = vectors.to(self.device, torch.float32)
        result = torch.zeros(vectors.shape, device=self.device)
        leaves = list(self.params.values())
        block = self.config.block_size
        for index, (x, _) in enumerate(self.batches):
            gradient = self.gradient(index)
            for start in range(0, len(vectors), block):
                chunk = vectors[start : start + block]
                tangents = self.space.unflatten(chunk if len(chunk) > 1 else chunk[0])
                products = torch.autograd.grad(
                    gradient,
                    leaves,
                    [tangents[n] for n in self.space.names],
                    retain_graph=True,
                    is_grads_batched=len(chunk) > 1,
                    materialize_grads=True,
                )
                flat = self.space.flatten(dict(zip(self.space.names, products)))
                result[start : start + block] += flat.reshape(len(chunk), -1) * (len(x) / len(self.data[0]))
        if not bool(torch.isfinite(result).all()):
            raise NonFiniteLoss(
                "a Hessian-vector product is NaN or infinite: the loss is not twice differentiable here"
            )
        self.products += len(vectors)
        return result


@dataclass(frozen=True, eq=False)
class Lanczos:
    """Per run r: the diagonal ``alphas[r]`` (length ``m_r``) and off-diagonal ``betas[r]`` (``m_r - 1``) of
    ``T_{m_r}``, the norm ``residual_betas[r]`` of the residual left after the last step (0 after a breakdown), and,
    when kept, the orthonormal Lanczos vectors ``basis: (runs, max m_r, n)``."""

    alphas: list[np.ndarray]
    betas: list[np.ndarray]
    residual_betas: np.ndarray
    basis: torch.Tensor | None

    def tridiagonal(self, run: int = 0) -> np.ndarray:
        return np.diag(self.alphas[run]) + np.diag(self.betas[run], 1) + np.diag(self.betas[run], -1)


def lanczos(
    operator: HessianOperator,
    starts: torch.Tensor,
    steps: int,
    reorthogonalize: bool,
    progress: Progress = no_progress,
    stop: Callable[[Lanczos], bool] | None = None,
) -> Lanczos:
    """Run ``b`` Lanczos processes in lockstep from the rows of ``starts: (b, n)``, one block product per step.

    With ``reorthogonalize`` every new vector is orthogonalised against all earlier ones of its run (two Gram-Schmidt
    passes) and the basis is returned. A run ends early when its ``β`` vanishes (an invariant subspace: its Ritz values
    are exact eigenvalues and its quadrature exact); ``stop``, called after every step, ends all runs.
    """
    count, n = starts.shape
    steps = min(steps, n)
    q = starts.to(operator.device, torch.float32)
    q = q / q.norm(dim=1, keepdim=True)
    previous = torch.zeros_like(q)
    basis = torch.empty(count, steps, n, device=operator.device) if reorthogonalize else None
    beta_previous = torch.zeros(count, device=operator.device)
    alphas: list[list[float]] = [[] for _ in range(count)]
    betas: list[list[float]] = [[] for _ in range(count)]
    residual_betas = np.zeros(count)
    active = list(range(count))
    for step in range(steps):
        if basis is not None:
            basis[active, step] = q[active]
        w = operator.matmul(q[active])
        alpha = (w * q[active]).sum(1)
        w = w - alpha[:, None] * q[active] - beta_previous[active, None] * previous[active]
        if basis is not None:
            for row, run in enumerate(active):
                span = basis[run, : step + 1]
                for _ in range(2):
                    w[row] -= span.T @ (span @ w[row])
        beta = w.norm(dim=1)
        progress(step + 1, steps, f"Lanczos step {step + 1}/{steps}")
        continuing = []
        for row, run in enumerate(active):
            alphas[run].append(float(alpha[row]))
            scale = max(abs(a) for a in alphas[run]) + max(betas[run], default=0.0)
            broke_down = float(beta[row]) <= 1e-6 * max(scale, 1e-30)
            residual_betas[run] = 0.0 if broke_down else float(beta[row])
            if step + 1 < steps and not broke_down:
                continuing.append(run)
                betas[run].append(float(beta[row]))
                previous[run] = q[run]
                q[run] = w[row] / beta[row]
                beta_previous[run] = beta[row]
        active = continuing
        result = Lanczos(
            [np.array(a) for a in alphas],
            [np.array(b[: len(a) - 1]) for a, b in zip(alphas, betas)],
            residual_betas.copy(),
            basis,
        )
        if not active or (stop is not None and stop(result)):
            break
    longest = max(len(a) for a in alphas)
    return Lanczos(result.alphas, result.betas, result.residual_betas, None if basis is None else basis[:, :longest])


def lanczos_start(size: int, seed: int) -> torch.Tensor:
    """The Gaussian start ``(1, size)`` of the top-eigenvalue run, whose basis also deflates the trace."""
    return torch.randn(1, size, generator=torch.Generator().manual_seed(seed))


def ritz_pairs(run: Lanczos, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` largest Ritz values of run 0, their vectors in the Lanczos basis ``(m, k)``, residuals
    ``r_i = |β s_{m,i}|`` (``= ||H y_i - θ_i y_i||`` in exact arithmetic) and estimated errors ``min(r_i, r_i² / δ_i)``
    with ``δ_i`` the distance to the nearest other Ritz value (``r_i`` when there is none)."""
    values, vectors = np.linalg.eigh(run.tridiagonal(0))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    residuals = np.abs(run.residual_betas[0] * vectors[-1])
    gaps = np.full(len(values), np.inf)
    gaps[:-1] = values[:-1] - values[1:]
    gaps[1:] = np.minimum(gaps[1:], values[:-1] - values[1:])
    errors = np.where(np.isfinite(gaps) & (gaps > residuals), residuals**2 / np.where(gaps > 0, gaps, 1.0), residuals)
    return values[:k], vectors[:, :k], residuals[:k], errors[:k]


@dataclass(frozen=True, eq=False)
class TopEigenvalues:
    """The ``k`` largest eigenvalues ``λ_1 ≥ ... ≥ λ_k`` of the Hessian, Ritz residual bounds
    ``||H v_i - λ_i v_i||`` (estimates), the unit eigenvectors ``(k, n)`` over ``space`` (``None`` when read back from a
    stored result), the Lanczos steps (= Hessian-vector products) used, and whether the tolerance was met."""

    eigenvalues: np.ndarray
    residuals: np.ndarray
    eigenvectors: torch.Tensor | None
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
        return {
            "eigenvalues": json_array(self.eigenvalues),
            "residuals": json_array(self.residuals),
            "parameters": list(self.space.names),
            "shapes": [list(s) for s in self.space.shapes],
            "iterations": self.iterations,
            "converged": self.converged,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopEigenvalues:
        space = ParameterSpace(tuple(data["parameters"]), tuple(tuple(s) for s in data["shapes"]))
        return cls(
            numpy_array(data["eigenvalues"]),
            numpy_array(data["residuals"]),
            None,
            space,
            int(data["iterations"]),
            bool(data["converged"]),
            float(data["seconds"]),
        )


def top_eigenvalues(
    operator: HessianOperator, k: int, config: HessianConfig = HessianConfig(), progress: Progress = no_progress
) -> TopEigenvalues:
    """The ``k`` algebraically largest eigenvalues of ``operator``'s Hessian and their eigenvectors, by Lanczos with
    full reorthogonalisation from a Gaussian start seeded by ``config.seed`` (see the module docstring)."""
    return lanczos_top_eigenvalues(operator, k, config, progress)[0]


def lanczos_top_eigenvalues(
    operator: HessianOperator,
    k: int,
    config: HessianConfig = HessianConfig(),
    progress: Progress = no_progress,
    min_steps: int = 0,
) -> tuple[TopEigenvalues, Lanczos]:
    """:func:`top_eigenvalues` and its Lanczos run, of at least ``min_steps`` steps (at most ``operator.size``), whose
    basis can deflate the trace (:func:`hutchinson_trace`)."""
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if k > operator.size:
        raise AnalysisError(f"k must be at most the number of parameters analysed ({operator.size}), got k={k}")
    if config.iterations < k:
        raise ConfigError(f"iterations ({config.iterations}) must be at least k ({k})")
    started = time.perf_counter()
    start = lanczos_start(operator.size, config.seed)

    def converged(run: Lanczos) -> bool:
        if len(run.alphas[0]) <= k:
            return False
        values, _, _, errors = ritz_pairs(run, k)
        return bool(np.all(errors <= config.tolerance * max(np.abs(values).max(), 1e-30)))

    def stop(run: Lanczos) -> bool:
        return len(run.alphas[0]) >= min(min_steps, operator.size) and converged(run)

    run = lanczos(operator, start, max(config.iterations, min_steps), True, progress, stop)
    values, vectors, residuals, _ = ritz_pairs(run, k)
    eigenvectors = torch.as_tensor(vectors.T.copy(), dtype=torch.float32, device=operator.device) @ run.basis[0]
    eigenvectors = eigenvectors / eigenvectors.norm(dim=1, keepdim=True)
    steps = len(run.alphas[0])
    done = steps == operator.size or run.residual_betas[0] == 0.0 or converged(run)
    result = TopEigenvalues(
        values, residuals, eigenvectors.cpu(), operator.space, steps, bool(done), time.perf_counter() - started
    )
    return result, run


def hessian_top_eigenvalues(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    k: int | None = None,
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
    loss: Loss = cross_entropy_loss,
    parameters: Sequence[str] | None = None,
) -> TopEigenvalues:
    """The ``k`` (default ``config.top_k``) largest eigenvalues of the Hessian of ``loss`` over
    ``data = (inputs, targets)`` and their eigenvectors; see :func:`top_eigenvalues` and :class:`HessianOperator`.

    Raises :class:`AnalysisError` when ``k`` exceeds the number of parameters ``n``, :class:`NonFiniteLoss` when the
    loss is not finite, :class:`DatasetError` for empty data.
    """
    operator = HessianOperator(model, data, config, device, loss, parameters)
    return top_eigenvalues(operator, config.top_k if k is None else k, config, progress)


def rademacher(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, size)`` independent signs ±1 (float32, CPU)."""
    return torch.randint(0, 2, (count, size), generator=generator).float().mul_(2).sub_(1)


MIN_TRACE_PROBES = 10
"""Probes drawn before ``trace_tolerance`` may stop the trace, so that the error bar's own estimate is reasonable."""


def finite_or_none(value: Any) -> float | None:
    """A stored error bar: ``None`` when missing or not finite (results once stored ``Infinity`` for one probe)."""
    return float(value) if value is not None and math.isfinite(float(value)) else None


@dataclass(frozen=True, eq=False)
class HessianTrace:
    """The estimate ``mean`` of ``tr H``, its error bar ``error = std / sqrt(P)`` (``None`` for a single probe, which
    has no spread to measure), the ``P`` per-probe estimates ``tr T_m + (P z_p)ᵀ H (P z_p)``, the exact part
    ``deflated = tr T_m`` over the ``deflation = m`` Lanczos vectors (0 and 0.0 for plain Hutchinson), and the
    relative ``tolerance`` the probes stopped at (0: none, every probe drawn)."""

    mean: float
    error: float | None
    values: np.ndarray
    seconds: float
    deflation: int = 0
    deflated: float = 0.0
    tolerance: float = 0.0

    @property
    def target(self) -> float:
        """The error bar the probes aimed for: ``tolerance * |mean|``."""
        return self.tolerance * abs(self.mean)

    @property
    def converged(self) -> bool:
        """Whether the error bar is at most :attr:`target`; never without a tolerance or an error bar."""
        return self.tolerance > 0 and self.error is not None and self.error <= self.target

    @property
    def status(self) -> str:
        """``"converged: ..."`` or ``"not converged: error bar X above tolerance Y after N probes"`` and the like."""
        probes = f"{len(self.values)} probe{'s' if len(self.values) != 1 else ''}"
        if self.error is None:
            return f"not converged: no error bar after {probes} (a single probe has no spread to measure)"
        if self.tolerance <= 0:
            return f"no tolerance set: error bar {self.error:.3g} after {probes}"
        relation = "within" if self.converged else "above"
        state = "converged" if self.converged else "not converged"
        return f"{state}: error bar {self.error:.3g} {relation} tolerance {self.target:.3g} after {probes}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "error": self.error,
            "values": json_array(self.values),
            "seconds": self.seconds,
            "deflation": self.deflation,
            "deflated": self.deflated,
            "tolerance": self.tolerance,
            "converged": self.converged,
            "status": self.status,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HessianTrace:
        """Also reads results stored before the tolerance was kept (0) or with an infinite single-probe error."""
        return cls(
            float(data["mean"]),
            finite_or_none(data["error"]),
            numpy_array(data["values"]),
            float(data["seconds"]),
            int(data.get("deflation", 0)),
            float(data.get("deflated", 0.0)),
            float(data.get("tolerance", 0.0)),
        )


def probe_seed(seed: int) -> int:
    """The seed of the trace's probes: a stream of NumPy's ``SeedSequence`` independent of :func:`lanczos_start`'s
    vector for ``seed``, so that the deflated probes are independent of the basis they are projected on."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


def hutchinson_trace(
    operator: HessianOperator,
    config: HessianConfig = HessianConfig(),
    progress: Progress = no_progress,
    krylov: Lanczos | None = None,
) -> HessianTrace:
    """``tr H ≈ tr T_m + (1/P) Σ_p (P z_p)ᵀ H (P z_p)`` over at most ``config.probes`` Rademacher probes seeded by
    ``config.seed`` (Hutchinson 1989), deflated by the basis of ``krylov`` (a run of :func:`lanczos` with its basis,
    as :func:`lanczos_top_eigenvalues` returns) or, without one, of a new run of ``config.deflation`` steps (see the
    module docstring). The error bar is the standard error of the mean over probes; drawing stops once it is at most
    ``config.trace_tolerance * |mean|``, after at least :data:`MIN_TRACE_PROBES` probes. A trace that reached
    ``config.probes`` first is returned as not converged (:attr:`HessianTrace.status`)."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(probe_seed(config.seed))
    if krylov is None and config.deflation:
        start = lanczos_start(operator.size, config.seed)
        krylov = lanczos(operator, start, config.deflation, True, progress)
    basis = None if krylov is None or krylov.basis is None else krylov.basis[0, : len(krylov.alphas[0])]
    deflated = 0.0 if basis is None else float(krylov.alphas[0].sum())
    values: list[float] = []
    error: float | None = None
    while len(values) < config.probes:
        probes = rademacher(min(config.block_size, config.probes - len(values)), operator.size, generator).to(
            operator.device
        )
        if basis is not None:
            probes = probes - (probes @ basis.T) @ basis
        values += (deflated + (operator.matmul(probes) * probes).sum(1).double()).tolist()
        progress(len(values), config.probes, f"trace probe {len(values)}/{config.probes}")
        if len(values) > 1:
            error = float(np.std(values, ddof=1) / math.sqrt(len(values)))
        enough = len(values) >= min(MIN_TRACE_PROBES, config.probes)
        if enough and error is not None and error <= config.trace_tolerance * abs(float(np.mean(values))):
            break
    array = np.array(values)
    return HessianTrace(
        float(array.mean()),
        error,
        array,
        time.perf_counter() - started,
        0 if basis is None else len(basis),
        deflated,
        config.trace_tolerance,
    )


def hessian_trace(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
    loss: Loss = cross_entropy_loss,
    parameters: Sequence[str] | None = None,
) -> HessianTrace:
    """Hutchinson's estimate of the trace of the Hessian of ``loss`` over ``data``; see :func:`hutchinson_trace`."""
    return hutchinson_trace(HessianOperator(model, data, config, device, loss, parameters), config, progress)


@dataclass(frozen=True, eq=False)
class EigenvalueDensity:
    """The SLQ eigenvalue density: ``density`` and its ``spread`` (standard deviation over runs) on ``grid``
    (``(bins,)``; ``∫ density = 1``), the Gaussian kernel width ``sigma``, and per run the quadrature ``nodes``
    (Ritz values) and ``weights`` (summing to 1)."""

    grid: np.ndarray
    density: np.ndarray
    spread: np.ndarray
    sigma: float
    nodes: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": json_array(self.grid),
            "density": json_array(self.density),
            "spread": json_array(self.spread),
            "sigma": self.sigma,
            "nodes": [json_array(n) for n in self.nodes],
            "weights": [json_array(w) for w in self.weights],
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EigenvalueDensity:
        return cls(
            numpy_array(data["grid"]),
            numpy_array(data["density"]),
            numpy_array(data["spread"]),
            float(data["sigma"]),
            tuple(numpy_array(n) for n in data["nodes"]),
            tuple(numpy_array(w) for w in data["weights"]),
            float(data["seconds"]),
        )


def slq_density(
    operator: HessianOperator, config: HessianConfig = HessianConfig(), progress: Progress = no_progress
) -> EigenvalueDensity:
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019, Sec. 3): ``config.runs`` runs of ``config.steps`` Lanczos
    steps from normalised Rademacher starts, advanced together one block product per step. Run ``r`` gives nodes
    ``θ_j`` and weights ``w_j = S_{1j}²`` of ``T = S Θ Sᵀ``; its density is ``Σ_j w_j N(t; θ_j, σ²)`` with
    ``σ = kernel_width · (θ_max - θ_min)`` over all runs, evaluated on ``bins`` points over
    ``[θ_min - 5σ, θ_max + 5σ]``. Returns the mean over runs and its standard deviation."""
    started = time.perf_counter()
    starts = rademacher(config.runs, operator.size, torch.Generator().manual_seed(config.seed))
    run = lanczos(operator, starts, config.steps, config.reorthogonalize, progress)
    nodes, weights = [], []
    for index in range(config.runs):
        values, vectors = np.linalg.eigh(run.tridiagonal(index))
        nodes.append(values)
        weights.append(vectors[0] ** 2)
    low = min(float(n.min()) for n in nodes)
    high = max(float(n.max()) for n in nodes)
    sigma = config.kernel_width * ((high - low) or max(abs(high), 1.0))
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, config.bins)
    per_run = np.stack(
        [
            (w[None, :] * np.exp(-0.5 * ((grid[:, None] - n[None, :]) / sigma) ** 2)).sum(1)
            / (sigma * math.sqrt(2 * math.pi))
            for n, w in zip(nodes, weights)
        ]
    )
    spread = per_run.std(0, ddof=1) if config.runs > 1 else np.zeros_like(grid)
    return EigenvalueDensity(
        grid, per_run.mean(0), spread, sigma, tuple(nodes), tuple(weights), time.perf_counter() - started
    )


def hessian_eigenvalue_density(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
    loss: Loss = cross_entropy_loss,
    parameters: Sequence[str] | None = None,
) -> EigenvalueDensity:
    """The SLQ eigenvalue density of the Hessian of ``loss`` over ``data``; see :func:`slq_density`."""
    return slq_density(HessianOperator(model, data, config, device, loss, parameters), config, progress)


@dataclass(frozen=True)
class LayerHessian:
    """One layer's diagonal Hessian block: its parameters, top eigenvalue, and trace with its error bar (``None``
    for a single probe)."""

    layer: str
    parameters: tuple[str, ...]
    top_eigenvalue: float
    trace: float
    trace_error: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "parameters": list(self.parameters)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerHessian:
        return cls(
            str(data["layer"]),
            tuple(data["parameters"]),
            float(data["top_eigenvalue"]),
            float(data["trace"]),
            finite_or_none(data["trace_error"]),
        )


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


def layerwise_hessian(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
    loss: Loss = cross_entropy_loss,
) -> list[LayerHessian]:
    """Top eigenvalue and trace of each layer's block ``H_ll = ∇²_{θ_l} L`` (other parameters held fixed); progress
    after every block of Hessian-vector products, so that a cancelled job stops within a few."""
    layers = layer_parameters(model)
    results = []
    for index, (layer, names) in enumerate(layers.items()):
        operator = HessianOperator(model, data, config, device, loss, names)

        def report(done, total, message, index=index, layer=layer):
            return progress(index, len(layers), f"layer {layer}: {message}")

        top, krylov = lanczos_top_eigenvalues(operator, 1, config, report, min_steps=config.deflation)
        trace = hutchinson_trace(operator, config, report, krylov=krylov)
        results.append(LayerHessian(layer, tuple(names), float(top.eigenvalues[0]), trace.mean, trace.error))
        progress(index + 1, len(layers), f"layer {layer}")
    return results


@dataclass(frozen=True, eq=False)
class PerturbationCurve:
    """Loss and accuracy at ``θ + t v`` for ``ts`` (``(T,)``), along the direction named ``label``."""

    ts: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": json_array(self.ts),
            "loss": json_array(self.loss),
            "accuracy": json_array(self.accuracy),
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerturbationCurve:
        return cls(
            numpy_array(data["ts"]), numpy_array(data["loss"]), numpy_array(data["accuracy"]), str(data["label"])
        )


def perturbation_curve(
    model: nn.Module,
    direction: Mapping[str, torch.Tensor],
    data: tuple[torch.Tensor, torch.Tensor],
    ts: Sequence[float] = PERTURBATION_TS,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    label: str = "top eigenvector",
    batch_size: int = 1000,
) -> PerturbationCurve:
    """Cross-entropy and accuracy on ``data`` at ``θ + t v`` for each ``t`` (default ``linspace(-0.5, 0.5, 21)``, as in
    the otfusion generalization study), eval mode. ``direction`` maps state_dict names to tensors; entries it omits
    (BatchNorm statistics, say) stay fixed."""
    device = device or default_device()
    origin = float_state(model)
    unknown = sorted(set(direction) - set(origin))
    if unknown:
        raise AnalysisError(f"the direction names entries the model does not have: {', '.join(unknown[:3])}")
    full = {
        k: direction[k].to(v.device, v.dtype).reshape(v.shape) if k in direction else torch.zeros_like(v)
        for k, v in origin.items()
    }
    inputs, targets = data
    if len(inputs) == 0:
        raise DatasetError("a perturbation curve needs data, got an empty dataset")
    ts_array = np.asarray(ts, dtype=float)
    coefficients = torch.tensor(np.stack([np.ones_like(ts_array), ts_array], axis=1))
    per_call = auto_points_per_call(model, device)
    losses, accuracies = evaluate_combinations(
        model, [origin, full], coefficients, inputs, targets, batch_size, per_call, device, progress, label
    )
    return PerturbationCurve(ts_array, losses, accuracies, label)


class SlowHessianWarning(SlowAnalysisWarning):
    """A Hessian analysis is expected to take longer than ``HessianConfig.warn_seconds``."""


HESSIAN_PRODUCTS = "Hessian-vector products"
LOWER_FOR = {
    "top eigenvalues": "iterations (or deflation)",
    "trace": "probes",
    "density": "steps or runs",
    "layers": "iterations and probes, or turn layers off",
}
"""The options that bound each stage's Hessian-vector products."""


def hessian_products(model: nn.Module, config: HessianConfig = HessianConfig()) -> dict[str, int]:
    """The most Hessian-vector products :func:`hessian_report` can use, by stage (each may stop earlier): top-k
    Lanczos ``min(max(iterations, deflation), n)``, the trace's ``probes``, the density's ``runs * min(steps, n)``,
    and with ``layers`` the top eigenvalue and trace of every layer's block of ``n_l`` parameters. Counted from the
    parameter shapes alone."""
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    if not sizes:
        raise AnalysisError(f"{type(model).__name__} has no trainable parameters: its Hessian is empty")
    size = sum(sizes)
    lanczos_steps = max(config.iterations, config.deflation)
    products = {
        "top eigenvalues": min(lanczos_steps, size),
        "trace": config.probes,
        "density": config.runs * min(config.steps, size),
    }
    if config.layers:
        shapes = dict(model.named_parameters())
        blocks = [sum(shapes[name].numel() for name in names) for names in layer_parameters(model).values()]
        products["layers"] = sum(min(lanczos_steps, block) + config.probes for block in blocks)
    return products


def check_products(models: Sequence[nn.Module], config: HessianConfig) -> int:
    """Refuse (:class:`CostLimitError`) Hessian analyses of ``models`` needing more than ``config.max_products``
    Hessian-vector products in all; returns the count. Nothing is computed."""
    stages: dict[str, int] = {}
    for model in models:
        for stage, count in hessian_products(model, config).items():
            stages[stage] = stages.get(stage, 0) + count
    total = sum(stages.values())
    largest = max(stages, key=stages.__getitem__)
    parts = ", ".join(f"{stage} {count:,}" for stage, count in stages.items())
    lower = f"{LOWER_FOR[largest]} ({parts} for {len(models)} model(s)), or raise max_products"
    check_units(total, config.max_products, HESSIAN_PRODUCTS, lower)
    return total


def estimate_hessian_cost(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
    loss: Loss = cross_entropy_loss,
) -> CostEstimate:
    """The cost of :func:`hessian_report`: :func:`hessian_products` (an upper bound), the passes of data batches
    they take, and seconds and memory measured on a probe of at most 128 examples, timed for a forward pass, a
    gradient with its graph and one Hessian-vector product, and scaled to the sample. Memory: the state, the data,
    the gradient graphs kept (the tensors autograd saves; every batch's with ``cache_graph``), the Lanczos basis
    (the larger of the top-k and, reorthogonalised, the density run) and the top-k eigenvectors."""
    device = device or default_device()
    products = hessian_products(model, config)
    inputs, targets = sample_data(data, config)
    samples = len(inputs)
    batches = math.ceil(samples / config.batch_size)
    size = sum(p.numel() for p in model.parameters() if p.requires_grad)
    operators = 1 + (len(layer_parameters(model)) if config.layers else 0)
    lanczos_steps = min(max(config.iterations, config.deflation), size)
    vector_passes = lanczos_steps + math.ceil(config.probes / config.block_size)
    vector_passes += min(config.steps, size) * math.ceil(config.runs / config.block_size)
    if config.layers:
        vector_passes += products["layers"]
    graphs = operators if config.cache_graph else vector_passes
    curve_points = 2 * len(PERTURBATION_TS)
    forwards = operators + curve_points

    probe = (inputs[: min(128, samples)].to(device), targets[: min(128, samples)].to(device))
    params = {n: p.detach().to(device).requires_grad_() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {k: v.detach().to(device) for k, v in model.state_dict().items() if k not in params}
    leaves = list(params.values())
    gradients: list[torch.Tensor] = []

    def graph() -> None:
        value = loss(functional_call(model, {**params, **fixed}, (probe[0],)), probe)
        gradients[:] = torch.autograd.grad(value, leaves, create_graph=True, materialize_grads=True)

    def timed(run: Callable[[], Any]) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    with eval_mode(model), torch.enable_grad():
        graph_bytes = saved_bytes(graph, shared=[*leaves, *fixed.values()]) / len(probe[0])
        tangents = [torch.ones_like(leaf) for leaf in leaves]
        hvp = lambda: torch.autograd.grad(gradients, leaves, tangents, retain_graph=True, materialize_grads=True)  # noqa: E731
        hvp()
        timings = [
            timed(lambda: loss(functional_call(model, {**params, **fixed}, (probe[0],)), probe)),
            timed(graph),
            timed(hvp),
        ]
    forward, with_graph, product = (t / len(probe[0]) for t in timings)
    seconds = samples * (forward * forwards + with_graph * graphs + product * sum(products.values()))
    kept = samples if config.cache_graph else min(config.batch_size, samples)
    state_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    basis = max(lanczos_steps, config.runs * min(config.steps, size) if config.reorthogonalize else config.runs)
    vectors = (basis + config.top_k + 4 * config.block_size) * size * 4
    memory = state_bytes + samples * inputs[0].numel() * inputs.element_size() + kept * graph_bytes + vectors
    return CostEstimate(
        sum(products.values()),
        HESSIAN_PRODUCTS,
        (forwards + graphs) * batches,
        (graphs + vector_passes) * batches,
        (forwards + graphs) * samples,
        seconds,
        int(memory),
    )


def check_hessian_limits(estimate: CostEstimate, config: HessianConfig) -> None:
    """Refuse (:class:`CostLimitError`) an estimate above ``config.max_seconds`` or ``config.max_memory_gb``; warn
    (:class:`SlowHessianWarning`) above ``config.warn_seconds``."""
    lower = "samples, iterations, probes, steps or runs"
    check_estimate(
        estimate, config.max_seconds, config.max_memory_gb, config.warn_seconds, lower, warning=SlowHessianWarning
    )


def check_hessian_cost(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
    loss: Loss = cross_entropy_loss,
) -> CostEstimate:
    """Every limit of ``config`` on :func:`hessian_report`, before any work: :func:`check_products` from the
    parameter shapes, then :func:`check_hessian_limits` on :func:`estimate_hessian_cost`."""
    check_products([model], config)
    estimate = estimate_hessian_cost(model, data, config, device, loss)
    check_hessian_limits(estimate, config)
    return estimate


@dataclass(frozen=True, eq=False)
class HessianReport:
    """Everything :func:`hessian_report` computes, with the config and sample count used; JSON via :meth:`to_dict`."""

    top: TopEigenvalues
    trace: HessianTrace
    density: EigenvalueDensity
    curves: tuple[PerturbationCurve, ...]
    config: HessianConfig
    samples: int
    seconds: float
    layers: tuple[LayerHessian, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "top": self.top.to_dict(),
            "trace": self.trace.to_dict(),
            "density": self.density.to_dict(),
            "curves": [c.to_dict() for c in self.curves],
            "config": self.config.to_dict(),
            "samples": self.samples,
            "seconds": self.seconds,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HessianReport:
        return cls(
            TopEigenvalues.from_dict(data["top"]),
            HessianTrace.from_dict({"tolerance": data["config"].get("trace_tolerance", 0.0), **data["trace"]}),
            EigenvalueDensity.from_dict(data["density"]),
            tuple(PerturbationCurve.from_dict(c) for c in data["curves"]),
            HessianConfig(**data["config"]),
            int(data["samples"]),
            float(data["seconds"]),
            tuple(LayerHessian.from_dict(layer) for layer in data.get("layers", [])),
        )


def hessian_report(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
    loss: Loss = cross_entropy_loss,
) -> HessianReport:
    """The generalization study's Hessian analysis in one call: top-k eigenvalues, trace, eigenvalue density, and the
    loss along the top eigenvector and along a random filter-normalised direction (seeded by ``config.seed``), and
    with ``config.layers`` each layer's top eigenvalue and trace."""
    check_hessian_cost(model, data, config, device, loss)
    started = time.perf_counter()
    operator = HessianOperator(model, data, config, device, loss)
    sample = operator.data
    stages = 6 if config.layers else 5

    def stage(index: int, name: str) -> Progress:
        return lambda done, total, message: progress(
            index * 1000 + 1000 * done // total, stages * 1000, f"{name}: {message}"
        )

    top, krylov = lanczos_top_eigenvalues(operator, config.top_k, config, stage(0, "top eigenvalues"), config.deflation)
    trace = hutchinson_trace(operator, config, stage(1, "trace"), krylov)
    del krylov
    density = slq_density(operator, config, stage(2, "density"))
    random = filter_normalized_direction(model, torch.Generator().manual_seed(config.seed))
    curves = (
        perturbation_curve(
            model,
            top.direction(0),
            sample,
            device=device,
            progress=stage(3, "top eigenvector"),
            batch_size=config.batch_size,
        ),
        perturbation_curve(
            model,
            random,
            sample,
            device=device,
            progress=stage(4, "random direction"),
            label="random filter-normalised",
            batch_size=config.batch_size,
        ),
    )
    layers = layerwise_hessian(model, sample, config, device, stage(5, "layers"), loss) if config.layers else []
    return HessianReport(
        top, trace, density, curves, config, len(sample[0]), time.perf_counter() - started, tuple(layers)
    )
