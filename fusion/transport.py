"""Optimal transport between the neurons of two layers: ground metrics, marginals, solvers and the correction.

Given features ``a_i`` (n neurons of the model being aligned) and ``b_j`` (m neurons of the reference), the map is the
solution of the discrete optimal transport problem (Singh & Jaggi, "Model Fusion via Optimal Transport", NeurIPS 2020)

.. math::

    T^\\star = \\arg\\min_{T \\ge 0} \\langle T, C \\rangle \\quad \\text{s.t.} \\quad T\\mathbf{1}_m = \\mu,\\;
    T^\\top \\mathbf{1}_n = \\nu, \\qquad C_{ij} = d(a_i, b_j),

solved exactly (network simplex, POT's ``ot.emd``; for equal widths and uniform marginals the optimum is a permutation,
which the Jonker-Volgenant shortest augmenting path algorithm, the ``lap`` package's ``lapjv``, finds faster: 1.8 s for
4096 neurons where SciPy's ``linear_sum_assignment`` takes 9.2 s) or with entropic regularisation ``- reg * H(T)``
(Sinkhorn, Cuturi 2013, POT's ``ot.sinkhorn`` in the log domain).

A plan becomes two linear maps on the neuron index. The *producer* map ``T diag(1/nu)`` (columns sum to one) makes
each new neuron the barycentre of the old neurons sent to it: it acts on incoming weights, biases and normalisation
parameters. The *consumer* map ``diag(1/mu) T`` (rows sum to one) hands each old neuron's outgoing weights to the new
neurons it was sent to, so that merged copies add up: it acts on the next layer's input columns. For equal widths
both equal ``n T`` and, for a hard assignment, the permutation matrix. otfusion's ``--correction`` uses
``T diag(1/beta)`` on both sides, which is only right for equal widths; ``correction="reference"`` reproduces it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fusion.distributed import all_reduce_sum
from fusion.errors import ConfigError, FusionError

Metric = Literal["euclidean", "sqeuclidean", "cosine"]
CostNormalization = Literal["none", "max", "median", "mean", "log"]
Solver = Literal["exact", "sinkhorn"]
Correction = Literal["marginals", "reference"]
SINKHORN_ITERATIONS = 5000
SINKHORN_TOLERANCE = 1e-3


class TransportError(FusionError):
    """The transport problem could not be solved (non-finite costs, solver failure)."""


@dataclass(frozen=True, eq=False)
class Gram:
    """Inner products ``<a_i, b_j>`` and squared norms ``|a_i|^2``, ``|b_j|^2`` of two feature sets. The ground costs
    are functions of these alone, and for features made of blocks (a neuron's rows in several layers) they are sums
    over the blocks, so the blocks need never be concatenated and an unchanged block's products can be kept."""

    dot: torch.Tensor
    norms_a: torch.Tensor
    norms_b: torch.Tensor

    @classmethod
    def of(cls, a: torch.Tensor, b: torch.Tensor) -> Gram:
        """The products of ``a: (n, d)`` and ``b: (m, d)``, in float32 on their device."""
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
            raise TransportError(
                f"features must be (n, d) and (m, d) with the same d, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        a, b = a.float(), b.float()
        return cls(a @ b.T, torch.linalg.vector_norm(a, dim=1).square(), torch.linalg.vector_norm(b, dim=1).square())

    def __add__(self, other: Gram) -> Gram:
        return Gram(self.dot + other.dot, self.norms_a + other.norms_a, self.norms_b + other.norms_b)

    def summed_over_ranks(self) -> Gram:
        """The products of features split over the ranks of ``torch.distributed`` (each holding some of the ``d``
        coordinates, e.g. its share of an activation sample): the sums of every rank's products, in place."""
        for tensor in (self.dot, self.norms_a, self.norms_b):
            all_reduce_sum(tensor)
        return self


def ground_cost(
    a: torch.Tensor, b: torch.Tensor, metric: Metric = "euclidean", normalize_rows: bool = False
) -> torch.Tensor:
    """Pairwise cost ``C: (n, m)`` between the rows of ``a: (n, d)`` and ``b: (m, d)``.

    ``euclidean``: ``||a_i - b_j||``; ``sqeuclidean``: its square; ``cosine``: ``1 - <a_i, b_j> / (|a_i| |b_j|)``.
    ``normalize_rows`` first scales every row to unit norm (otfusion's ``--normalize-wts``). Computed in float32 on
    the features' device through one matrix product (the cancellation in ``|a|^2 + |b|^2 - 2<a, b>`` stays far
    below the gaps between distinct neurons' costs); the plan is then solved in float64.
    """
    return gram_cost(Gram.of(a, b), metric, normalize_rows)


def gram_cost(gram: Gram, metric: Metric = "euclidean", normalize_rows: bool = False) -> torch.Tensor:
    """:func:`ground_cost` from the features' products; a row of norm zero stays zero when normalised."""
    dot, norms_a, norms_b = gram.dot, gram.norms_a, gram.norms_b
    if normalize_rows or metric == "cosine":
        scale_a = 1.0 / norms_a.sqrt().clamp_min(1e-12)
        scale_b = 1.0 / norms_b.sqrt().clamp_min(1e-12)
        dot = dot * scale_a[:, None] * scale_b[None, :]
        norms_a, norms_b = norms_a * scale_a.square(), norms_b * scale_b.square()
    if metric == "cosine":
        return 1.0 - dot
    squared = (norms_a[:, None] + norms_b[None, :] - 2.0 * dot).clamp_min(0.0)
    if metric == "sqeuclidean":
        return squared
    if metric == "euclidean":
        return squared.sqrt()
    raise ConfigError(f"unknown ground metric {metric!r}; expected euclidean, sqeuclidean or cosine")


def normalize_cost(cost: torch.Tensor, how: CostNormalization = "none") -> torch.Tensor:
    """Rescale a cost matrix (otfusion's ``--ground-metric-normalize``): divide by its max, median or mean, or
    take ``log(1 + C)``."""
    if how == "none":
        return cost
    if how == "log":
        return torch.log1p(cost)
    scale = {"max": cost.max, "median": cost.median, "mean": cost.mean}.get(how)
    if scale is None:
        raise ConfigError(f"unknown cost normalisation {how!r}; expected none, max, median, mean or log")
    value = float(scale())
    return cost / value if value > 0 else cost


def marginal(size: int, importance: torch.Tensor | None = None) -> np.ndarray:
    """Uniform weights ``1/size``, or weights proportional to a non-negative ``importance`` per neuron."""
    if importance is None:
        return np.full(size, 1.0 / size)
    weights = importance.detach().double().cpu().numpy().clip(min=0.0)
    if weights.shape != (size,) or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise TransportError(f"importance must be {size} finite non-negative numbers with a positive sum")
    weights = weights + 1e-12 * weights.sum()
    return weights / weights.sum()


def load_solvers() -> None:
    """Import the solvers' packages (POT, lap) now. They are imported where used, so that training never pays for them;
    :func:`fusion.registry.fuse` calls this before its clock starts, so that a process's first fusion is not timed
    with their import (POT pulls in scikit-learn and SciPy: 2 s on a quiet 2-core CPU, 10 s on a busy one)."""
    import lap  # noqa: F401
    import ot  # noqa: F401


def assignment(cost: np.ndarray) -> tuple[np.ndarray, float]:
    """The column assigned to each row by the least-cost one-to-one assignment of a square ``cost`` (Jonker-Volgenant,
    ``lap.lapjv``), and that assignment's cost."""
    from lap import lapjv

    _, columns, _ = lapjv(np.ascontiguousarray(cost, dtype=np.float64), extend_cost=False)
    return columns, float(cost[np.arange(len(cost)), columns].sum())


def transport_plan(
    cost: torch.Tensor,
    mu: np.ndarray | None = None,
    nu: np.ndarray | None = None,
    solver: Solver = "exact",
    reg: float = 0.01,
) -> np.ndarray:
    """Solve the transport problem of the module docstring; returns the plan ``T: (n, m)`` in float64.

    ``reg`` is the entropic regularisation of Sinkhorn (otfusion's ``--reg``, default 0.01), relative to the cost's
    scale as given; costs are best normalised (``normalize_cost``) before Sinkhorn.
    """
    # Imported here, not at the top: POT's package pulls in scikit-learn and SciPy's solvers (1.9 s on a 2-core CPU),
    # which training and the demo never need.
    import ot

    matrix = cost.detach().double().cpu().numpy()
    n, m = matrix.shape
    if not np.isfinite(matrix).all():
        raise TransportError("the cost matrix has NaN or infinite entries (are the weights or activations finite?)")
    uniform_a, uniform_b = mu is None, nu is None
    mu = np.full(n, 1.0 / n) if mu is None else np.asarray(mu, dtype=np.float64)
    nu = np.full(m, 1.0 / m) if nu is None else np.asarray(nu, dtype=np.float64)
    if solver == "exact":
        if n == m and uniform_a and uniform_b:
            cols, _ = assignment(matrix)
            plan = np.zeros((n, m))
            plan[np.arange(n), cols] = 1.0 / n
            return plan
        plan, log = ot.emd(mu, nu, matrix, numItermax=max(100_000, 50 * n * m), log=True)
        if log.get("warning"):
            raise TransportError(f"exact OT did not converge: {log['warning']}")
        return plan
    if solver == "sinkhorn":
        if not reg > 0:
            raise ConfigError(f"Sinkhorn needs a positive regularisation, got {reg}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan, log = ot.sinkhorn(
                mu, nu, matrix, reg, method="sinkhorn_log", numItermax=SINKHORN_ITERATIONS, stopThr=1e-9, log=True
            )
        if not np.isfinite(plan).all() or plan.sum() <= 0:
            raise TransportError(f"Sinkhorn failed at reg={reg}; raise the regularisation or normalise the cost")
        violation = float(np.abs(plan.sum(0) - nu).max() + np.abs(plan.sum(1) - mu).max())
        if violation > SINKHORN_TOLERANCE:
            raise TransportError(
                f"Sinkhorn did not converge in {SINKHORN_ITERATIONS} iterations at reg={reg} (marginals off by "
                f"{violation:.2g}); raise reg, normalise the cost (cost_normalization='max') or use the exact solver"
            )
        return plan
    raise ConfigError(f"unknown solver {solver!r}; expected exact or sinkhorn")


@dataclass(frozen=True, eq=False)
class Transport:
    """A map from ``n`` source neurons to ``m`` target neurons of one group.

    ``plan``: the coupling ``T: (n, m)``; ``permutation``: for a hard assignment (one-to-one, or a selection of ``m``
    of the ``n`` neurons), ``permutation[j]`` is the source neuron that becomes target neuron ``j`` (the maps are then
    applied by indexing, exactly, and unselected neurons are dropped); ``cost``: ``<T, C>``; ``cost_matrix``: the
    ground cost ``C`` the plan was solved on, when there was one. ``producer`` and ``consumer``, the ``(n, m)``
    matrices of the module docstring, are derived from the plan and ``correction`` when first used (a permutation
    never needs them), unless ``rows`` gives the producer matrix (Intra-Fusion's merged rows).
    """

    plan: np.ndarray
    permutation: np.ndarray | None
    cost: float
    cost_matrix: torch.Tensor | None = None
    correction: Correction = "marginals"
    rows: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.plan.shape[0]), int(self.plan.shape[1]))

    @functools.cached_property
    def barycentres(self) -> torch.Tensor:
        """``T diag(1 / column sums)``: each target the barycentre of its sources."""
        return torch.from_numpy(self.plan / self.plan.sum(0)[None, :]).float()

    @property
    def producer(self) -> torch.Tensor:
        """:attr:`barycentres`, or ``rows`` when given."""
        return self.barycentres if self.rows is None else self.rows

    @functools.cached_property
    def consumer(self) -> torch.Tensor:
        """``diag(1 / row sums) T`` (``marginals``: a source column split by its mass), or :attr:`barycentres`
        (``reference``: otfusion's ``T / beta`` on both sides)."""
        if self.correction == "reference":
            return self.barycentres
        return torch.from_numpy(self.plan / self.plan.sum(1)[:, None]).float()

    @classmethod
    def from_plan(
        cls,
        plan: np.ndarray,
        cost: float = 0.0,
        correction: Correction = "marginals",
        cost_matrix: torch.Tensor | None = None,
    ) -> Transport:
        plan = np.asarray(plan, dtype=np.float64)
        n, m = plan.shape
        if (plan.sum(0) <= 0).any() or (plan.sum(1) <= 0).any():
            raise TransportError("every neuron must send and receive some mass")
        if correction not in ("marginals", "reference"):
            raise ConfigError(f"unknown correction {correction!r}; expected marginals or reference")
        permutation = None
        if n == m and np.count_nonzero(plan) == n:
            rows, cols = np.nonzero(plan)
            if len(set(rows)) == n and len(set(cols)) == n:
                permutation = rows[np.argsort(cols)]
        return cls(plan, permutation, float(cost), cost_matrix, correction)

    @classmethod
    def identity(cls, size: int) -> Transport:
        return cls.from_plan(np.eye(size) / size)

    @classmethod
    def selection(cls, size: int, kept: Sequence[int]) -> Transport:
        """Keep the neurons ``kept`` (in that order) of ``size`` and drop the others: pruning without merging."""
        index = np.asarray(kept, dtype=np.int64)
        if (
            index.ndim != 1
            or len(index) == 0
            or len(set(index.tolist())) != len(index)
            or index.min() < 0
            or index.max() >= size
        ):
            raise TransportError(f"kept neurons must be distinct indices in [0, {size}), got {list(kept)[:8]}")
        plan = np.zeros((size, len(index)))
        plan[index, np.arange(len(index))] = 1.0 / len(index)
        return cls(plan, index, 0.0, correction="reference")


def solve_transport(
    a: torch.Tensor | Gram,
    b: torch.Tensor | None = None,
    *,
    metric: Metric = "euclidean",
    normalize_rows: bool = False,
    cost_normalization: CostNormalization = "none",
    solver: Solver = "exact",
    reg: float = 0.01,
    mu: np.ndarray | None = None,
    nu: np.ndarray | None = None,
    correction: Correction = "marginals",
) -> Transport:
    """Ground cost between features ``a: (n, d)`` and ``b: (m, d)`` (or from their products, a :class:`Gram`),
    transport plan, and the resulting maps."""
    gram = a if isinstance(a, Gram) else Gram.of(a, b)
    cost = normalize_cost(gram_cost(gram, metric, normalize_rows), cost_normalization)
    plan = transport_plan(cost, mu, nu, solver, reg)
    cost = cost.detach().cpu()
    return Transport.from_plan(plan, float((torch.from_numpy(plan) * cost.double()).sum()), correction, cost.float())
