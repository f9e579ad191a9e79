"""The eigenvalue density of any symmetric :class:`~analysis.curvature.operator.LinearOperator` by stochastic Lanczos
quadrature (Ubaru, Chen & Saad 2017, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature"; Lin, Saad &
Yang 2016; on Hessians Ghorbani et al. 2019 and Yao et al. 2020, PyHessian).

The spectral density ``φ(t) = (1/n) Σ_i δ(t - λ_i)`` satisfies ``∫ f φ = tr f(A) / n = E[vᵀ f(A) v]`` for a random
unit ``v = z / sqrt(n)`` with Rademacher ``z``. ``m`` Lanczos steps from ``v`` give ``T_m = S Θ Sᵀ``, and Gauss
quadrature ``vᵀ f(A) v ≈ Σ_j w_j f(θ_j)`` with nodes ``θ_j`` (Ritz values) and weights ``w_j = S_{1j}²`` (summing to
1), exact for polynomials of degree below ``2m``. Each run's density is ``Σ_j w_j N(t; θ_j, σ²)``, a Gaussian kernel
of width ``σ`` in place of each delta; the runs are averaged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from analysis.curvature.hutchinson import rademacher
from analysis.curvature.lanczos import lanczos
from analysis.curvature.operator import LinearOperator
from fusion.progress import Progress, no_progress
from fusion.records import Record


@dataclass(frozen=True, eq=False)
class EigenvalueDensity(Record):
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


def slq_density(
    operator: LinearOperator,
    steps: int = 100,
    runs: int = 4,
    bins: int = 1000,
    kernel_width: float = 0.01,
    reorthogonalize: bool = True,
    seed: int = 0,
    progress: Progress = no_progress,
) -> EigenvalueDensity:
    """Stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; see the module docstring): ``runs`` runs of at most
    ``steps`` Lanczos steps (PyHessian's ``n_v`` and ``iter=100``) from normalised Rademacher starts seeded by
    ``seed``, advanced together one block product per step.

    Run ``r`` gives nodes ``θ_j`` and weights ``w_j = S_{1j}²`` of ``T = S Θ Sᵀ``; its density is
    ``Σ_j w_j N(t; θ_j, σ²)`` with ``σ = kernel_width · (θ_max - θ_min)`` over all runs, evaluated on ``bins`` points
    over ``[θ_min - 5σ, θ_max + 5σ]``. Its moments estimate those of the spectrum: ``Σ_j w_j θ_j = vᵀ A v`` (mean
    ``tr A / n``) and ``Σ_j w_j θ_j² = ||A v||²`` (mean ``tr A² / n``). ``reorthogonalize`` keeps every run's basis
    (memory ``runs · steps · n``) and stops the spurious copies of converged Ritz values of plain Lanczos.

    Returns
    -------
    EigenvalueDensity
        The mean density over runs and its standard deviation on ``grid: (bins,)``, and every run's nodes and weights.

    >>> from analysis.curvature.operator import MatrixOperator
    >>> operator = MatrixOperator(torch.diag(torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)))
    >>> density = slq_density(operator, steps=4, runs=2, bins=200)
    >>> [round(float((w * n).sum()), 6) for n, w in zip(density.nodes, density.weights)]
    [2.0, 2.0]
    >>> round(float(np.trapezoid(density.density, density.grid)), 4)
    1.0
    """
    started = time.perf_counter()
    starts = rademacher(runs, operator.size, torch.Generator().manual_seed(seed))
    run = lanczos(operator, starts, steps, reorthogonalize, progress)
    nodes, weights = [], []
    for index in range(runs):
        values, vectors = np.linalg.eigh(run.tridiagonal(index))
        nodes.append(values)
        weights.append(vectors[0] ** 2)
    low = min(float(n.min()) for n in nodes)
    high = max(float(n.max()) for n in nodes)
    sigma = kernel_width * ((high - low) or max(abs(high), 1.0))
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, bins)
    per_run = np.stack(
        [
            (w[None, :] * np.exp(-0.5 * ((grid[:, None] - n[None, :]) / sigma) ** 2)).sum(1)
            / (sigma * math.sqrt(2 * math.pi))
            for n, w in zip(nodes, weights)
        ]
    )
    spread = per_run.std(0, ddof=1) if runs > 1 else np.zeros_like(grid)
    return EigenvalueDensity(
        grid, per_run.mean(0), spread, sigma, tuple(nodes), tuple(weights), time.perf_counter() - started
    )
