"""The Lanczos process on any symmetric linear operator, and the Ritz pairs of its tridiagonal matrix.

An operator is anything with a ``device`` and ``matmul(V) -> A V`` for a block ``V: (b, n)`` (:class:`LinearOperator`);
the Hessian (:class:`analysis.hessian_operator.HessianOperator`) is one. ``b`` processes run in lockstep, one block
product per step; with full reorthogonalisation the Lanczos basis is kept (it deflates the Hessian trace).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from fusion.progress import Progress, no_progress


class LinearOperator(Protocol):
    """A symmetric linear map ``A`` on ``R^n`` given by its products with blocks of vectors."""

    device: torch.device

    def matmul(self, vectors: torch.Tensor) -> torch.Tensor:
        """``A V`` row by row: ``(b, n) -> (b, n)``."""
        ...


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
    operator: LinearOperator,
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
        w = operator.matmul(q if len(active) == count else q[active])
        alpha = torch.zeros(len(active), device=operator.device)
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
