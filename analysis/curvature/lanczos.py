"""The Lanczos process on any symmetric :class:`~analysis.curvature.operator.LinearOperator`, the Ritz pairs of its
tridiagonal matrix and the top-k eigenpairs they estimate (Lanczos 1950, "An iteration method for the solution of the
eigenvalue problem of linear differential and integral operators").

From a unit start ``q_1``, ``m`` steps build an orthonormal basis ``Q_m = [q_1 ... q_m]`` of the Krylov space
``span{q_1, A q_1, ..., A^{m-1} q_1}`` and the tridiagonal ``T_m = Q_mᵀ A Q_m`` (diagonal ``α``, off-diagonal ``β``):
``β_j q_{j+1} = A q_j - α_j q_j - β_{j-1} q_{j-1}``. The eigenvalues ``θ_i`` of ``T_m = S Θ Sᵀ`` (Ritz values)
approach the extreme eigenvalues of ``A`` first; ``Q_m s_i`` are their Ritz vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from analysis import AnalysisError
from analysis.curvature.operator import LinearOperator
from fusion.errors import ConfigError
from fusion.progress import Progress, no_progress


@dataclass(frozen=True, eq=False)
class Lanczos:
    """Per run r: the diagonal ``alphas[r]`` (length ``m_r``) and off-diagonal ``betas[r]`` (``m_r - 1``) of
    ``T_{m_r}``, the norm ``residual_betas[r]`` of the residual left after the last step (0 after a breakdown), and,
    when kept, the orthonormal Lanczos vectors ``basis: (runs, max m_r, n)`` (row ``j`` of run ``r`` is ``q_{j+1}``)."""

    alphas: list[np.ndarray]
    betas: list[np.ndarray]
    residual_betas: np.ndarray
    basis: torch.Tensor | None

    def tridiagonal(self, run: int = 0) -> np.ndarray:
        """``T_m`` of ``run``: ``(m, m)``."""
        return np.diag(self.alphas[run]) + np.diag(self.betas[run], 1) + np.diag(self.betas[run], -1)


def lanczos(
    operator: LinearOperator,
    starts: torch.Tensor,
    steps: int,
    reorthogonalize: bool,
    progress: Progress = no_progress,
    stop: Callable[[Lanczos], bool] | None = None,
) -> Lanczos:
    """Run ``b`` Lanczos processes in lockstep from the columns of ``starts: (n, b)`` (normalised here), one block
    product ``A [q^(1) ... q^(b)]`` per step, at most ``min(steps, n)`` steps, in ``operator.dtype``.

    With ``reorthogonalize`` every new vector is orthogonalised against all earlier ones of its run (two Gram-Schmidt
    passes, which keeps ``Q_m`` orthonormal to working precision) and the basis is returned. A run ends early when its
    ``β`` vanishes (an invariant subspace: its Ritz values are exact eigenvalues and its quadrature exact); ``stop``,
    called after every step, ends all runs.

    >>> from analysis.curvature.operator import MatrixOperator
    >>> operator = MatrixOperator(torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64)))
    >>> run = lanczos(operator, torch.ones(5, 1), steps=5, reorthogonalize=True)
    >>> np.linalg.eigvalsh(run.tridiagonal()).round(6).tolist()
    [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    n, count = starts.shape
    steps = min(steps, n)
    device, dtype = operator.device, operator.dtype
    q = starts.T.to(device, dtype)
    q = q / q.norm(dim=1, keepdim=True)
    previous = torch.zeros_like(q)
    basis = torch.empty(count, steps, n, device=device, dtype=dtype) if reorthogonalize else None
    beta_previous = torch.zeros(count, device=device, dtype=dtype)
    alphas: list[list[float]] = [[] for _ in range(count)]
    betas: list[list[float]] = [[] for _ in range(count)]
    residual_betas = np.zeros(count)
    active = list(range(count))
    for step in range(steps):
        if basis is not None:
            basis[active, step] = q[active]
        block = q if len(active) == count else q[active]
        # A copy: the recurrence works on w in place, and an operator may hand back its input (the identity does).
        w = operator.matmul(block.T).T.clone()
        alpha = torch.zeros(len(active), device=device, dtype=dtype)
        for row, run in enumerate(active):
            alpha[row] = torch.dot(w[row], q[run])
            w[row].add_(q[run], alpha=-float(alpha[row])).add_(previous[run], alpha=-float(beta_previous[run]))
            if basis is not None:
                span = basis[run, : step + 1]
                for _ in range(2):
                    w[row].addmv_(span.T, span @ w[row], alpha=-1.0)
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
                previous[run].copy_(q[run])
                q[run].copy_(w[row]).div_(beta[row])
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
    """The seeded Gaussian start ``(size, 1)`` (float32, CPU) of the top-eigenvalue run, whose basis also deflates the
    trace (:func:`analysis.curvature.hutchinson.hutchinson_trace`)."""
    return torch.randn(size, 1, generator=torch.Generator().manual_seed(seed))


def ritz_pairs(run: Lanczos, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` largest Ritz values ``θ_1 ≥ ... ≥ θ_k`` of run 0, their vectors ``s_i`` in the Lanczos basis
    ``(m, k)``, residuals ``r_i = |β_m s_{m,i}|`` (``= ||A y_i - θ_i y_i||`` in exact arithmetic for the Ritz vector
    ``y_i = Q_m s_i``) and estimated errors ``min(r_i, r_i² / δ_i)`` with ``δ_i`` the distance to the nearest other
    Ritz value (``r_i`` when there is none). A Ritz value lies within ``r_i`` of an eigenvalue, and within
    ``r_i² / δ_i`` when the rest of the spectrum is ``δ_i`` away (Parlett, "The Symmetric Eigenvalue Problem",
    Thm 11.7.1)."""
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
class TopEigenpairs:
    """The ``k`` largest eigenvalues ``λ_1 ≥ ... ≥ λ_k`` (``(k,)``) as Ritz values, their unit Ritz vectors
    ``eigenvectors: (n, k)`` in the operator's dtype and on its device, the Ritz residuals ``||A y_i - λ_i y_i||``
    (``(k,)``), the Lanczos ``steps`` (= block products of one vector) taken, whether every estimated error met the
    tolerance (or the Krylov space was exhausted), the ``seconds`` taken, and the Lanczos ``run`` with its basis (it
    deflates the trace: :func:`analysis.curvature.hutchinson.hutchinson_trace`)."""

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    residuals: np.ndarray
    steps: int
    converged: bool
    seconds: float
    run: Lanczos


def lanczos_top_eigenvalues(
    operator: LinearOperator,
    k: int,
    steps: int = 100,
    tolerance: float = 1e-3,
    seed: int = 0,
    min_steps: int = 0,
    progress: Progress = no_progress,
) -> TopEigenpairs:
    """The ``k`` algebraically largest eigenvalues of ``operator`` and their eigenvectors, by Lanczos with full
    reorthogonalisation from the Gaussian start :func:`lanczos_start` seeded by ``seed`` (Lanczos 1950; Yao et al.
    2020, "PyHessian", Sec. 3).

    Stops after at most ``steps`` steps (``maxIter=100`` in PyHessian), at least ``min(min_steps, n)`` (so that the
    basis can deflate a trace), once the estimated error (:func:`ritz_pairs`) of each of the top ``k`` Ritz values is at
    most ``tolerance * |θ_1|`` (PyHessian's ``tol=1e-3``, which there bounds the change between power iterations).

    Parameters
    ----------
    operator : LinearOperator
        A symmetric ``A`` of size ``n``.
    k : int
        How many eigenvalues, ``1 <= k <= n``.
    steps, tolerance, seed, min_steps, progress
        As above; ``steps >= k``; ``progress(done, steps, message)`` after every step.

    Returns
    -------
    TopEigenpairs
        ``eigenvalues (k,)``, ``eigenvectors (n, k)``, residuals ``(k,)`` and the run.

    Raises :class:`~fusion.errors.ConfigError` for ``k < 1`` or ``steps < k`` and :class:`AnalysisError` for ``k > n``.

    >>> from analysis.curvature.operator import MatrixOperator
    >>> operator = MatrixOperator(torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64)))
    >>> top = lanczos_top_eigenvalues(operator, 3, steps=50, tolerance=1e-10)
    >>> top.eigenvalues.round(6).tolist(), top.eigenvectors.shape
    ([50.0, 49.0, 48.0], torch.Size([50, 3]))
    """
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if k > operator.size:
        raise AnalysisError(f"k must be at most the number of parameters analysed ({operator.size}), got k={k}")
    if steps < k:
        raise ConfigError(f"steps ({steps}) must be at least k ({k})")
    started = time.perf_counter()

    def converged(run: Lanczos) -> bool:
        if len(run.alphas[0]) <= k:
            return False
        values, _, _, errors = ritz_pairs(run, k)
        return bool(np.all(errors <= tolerance * max(np.abs(values).max(), 1e-30)))

    def stop(run: Lanczos) -> bool:
        return len(run.alphas[0]) >= min(min_steps, operator.size) and converged(run)

    run = lanczos(operator, lanczos_start(operator.size, seed), max(steps, min_steps), True, progress, stop)
    values, vectors, residuals, _ = ritz_pairs(run, k)
    eigenvectors = run.basis[0].T @ torch.as_tensor(vectors, dtype=operator.dtype, device=operator.device)
    eigenvectors = eigenvectors / eigenvectors.norm(dim=0, keepdim=True)
    taken = len(run.alphas[0])
    done = taken == operator.size or run.residual_betas[0] == 0.0 or converged(run)
    return TopEigenpairs(values, eigenvectors, residuals, taken, bool(done), time.perf_counter() - started, run)
