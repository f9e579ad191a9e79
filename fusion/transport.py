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
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from fusion.distributed import all_reduce_sum
from fusion.errors import ConfigError, FusionError
from fusion.options import Options
from fusion.problems import Checks

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

    .. math::

        C_{ij} = \\|a_i - b_j\\| \\ (\\text{euclidean}), \\quad \\|a_i - b_j\\|^2 \\ (\\text{sqeuclidean}),
        \\quad 1 - \\frac{\\langle a_i, b_j \\rangle}{\\|a_i\\| \\|b_j\\|} \\ (\\text{cosine}).

    Computed in float32 on the features' device through one matrix product (the cancellation in
    ``|a|^2 + |b|^2 - 2<a, b>`` stays far below the gaps between distinct neurons' costs); the plan is then solved in
    float64 (:func:`transport_plan`).

    Parameters
    ----------
    a : torch.Tensor
        ``(n, d)``: one feature row per neuron of the model being aligned (incoming weights, or activations).
    b : torch.Tensor
        ``(m, d)``: the reference's neurons, in the same ``d`` coordinates.
    metric : {"euclidean", "sqeuclidean", "cosine"}
        The ground metric (otfusion's ``--ground-metric``); a row of norm zero has cosine cost 1 to every row.
    normalize_rows : bool
        Scale every row to unit norm first (otfusion's ``--normalize-wts``).

    Returns
    -------
    torch.Tensor
        ``C: (n, m)``, float32, on ``a``'s device.

    References
    ----------
    Singh & Jaggi, "Model Fusion via Optimal Transport", NeurIPS 2020, Sec. 4 (the ground metric between neurons).

    Examples
    --------
    >>> import torch
    >>> from fusion import ground_cost
    >>> a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> b = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    >>> ground_cost(a, b).square().round(decimals=4)
    tensor([[1., 0., 2.],
            [2., 1., 1.],
            [0., 1., 1.]])
    >>> ground_cost(a[1:], b, "cosine").round(decimals=4)
    tensor([[1.0000, 1.0000, 0.2929],
            [0.0000, 1.0000, 0.2929]])
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
    """The optimal transport plan between ``n`` source and ``m`` target neurons for the cost ``C: (n, m)``.

    Exact (``solver="exact"``, Singh & Jaggi 2020):

    .. math::

        T^\\star = \\arg\\min_{T \\in \\mathbb{R}_{\\ge 0}^{n \\times m}} \\langle T, C \\rangle
        = \\sum_{ij} T_{ij} C_{ij} \\quad \\text{s.t.} \\quad T \\mathbf{1}_m = \\mu, \\quad
        T^\\top \\mathbf{1}_n = \\nu,

    solved by the network simplex (POT's ``ot.emd``), or, for ``n = m`` and uniform marginals, where the optimum is a
    permutation scaled by ``1/n``, as a linear assignment (Jonker-Volgenant, ``lap.lapjv``). Entropic
    (``solver="sinkhorn"``, Cuturi 2013): the same constraints, the objective
    ``<T, C> + reg * sum_ij T_ij log T_ij``, solved by Sinkhorn's iterations in the log domain (POT's
    ``ot.sinkhorn(..., method="sinkhorn_log")``); its plan spreads every neuron's mass over near neighbours.

    Parameters
    ----------
    cost : torch.Tensor
        ``C: (n, m)``, finite (:func:`ground_cost`, possibly normalised).
    mu : numpy.ndarray, optional
        ``(n,)`` source masses summing to 1; uniform ``1/n`` when ``None``.
    nu : numpy.ndarray, optional
        ``(m,)`` target masses summing to 1; uniform ``1/m`` when ``None``.
    solver : {"exact", "sinkhorn"}
        Exact OT, or entropic OT.
    reg : float
        Sinkhorn's regularisation (otfusion's ``--reg``, default 0.01), relative to the cost's scale as given: costs
        are best normalised (:func:`normalize_cost`) before Sinkhorn.

    Returns
    -------
    numpy.ndarray
        The plan ``T: (n, m)``, float64, with row sums ``mu`` and column sums ``nu``.

    Raises
    ------
    TransportError
        For a cost with NaN or infinite entries, an exact solver that does not converge, or Sinkhorn iterations that
        fail or miss the marginals by more than ``1e-3``.

    References
    ----------
    Singh & Jaggi, "Model Fusion via Optimal Transport", NeurIPS 2020. Cuturi, "Sinkhorn Distances: Lightspeed
    Computation of Optimal Transport", NeurIPS 2013.

    Examples
    --------
    >>> import torch
    >>> from fusion import ground_cost, transport_plan
    >>> a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> b = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    >>> cost = ground_cost(a, b)
    >>> 3 * transport_plan(cost)  # equal widths: a permutation, source i to target j where T[i, j] > 0
    array([[0., 1., 0.],
           [0., 0., 1.],
           [1., 0., 0.]])
    >>> transport_plan(cost[:, :2]).round(3)  # three neurons onto two: neuron 1 is split between both targets
    array([[0.   , 0.333],
           [0.167, 0.167],
           [0.333, 0.   ]])
    >>> transport_plan(cost, solver="sinkhorn", reg=0.5).round(2)
    array([[0.05, 0.24, 0.04],
           [0.04, 0.07, 0.22],
           [0.24, 0.02, 0.07]])
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

    A plan ``T: (n, m)`` (:func:`transport_plan`) acts on the group's members through two matrices. The producer map
    ``P = T diag(1/nu)`` (columns sum to one) makes target neuron ``j`` the barycentre of its sources,
    ``W'_j = sum_i P_ij W_i``, for the rows of the weights, biases and normalisation entries; the consumer map
    ``Q = diag(1/mu) T`` (rows sum to one) hands each source's input columns of the next layer to the targets it was
    sent to, ``V'_{:, j} = sum_i Q_ij V_{:, i}``, so merged copies add up. For equal widths both are ``n T``, and for a
    hard assignment the permutation matrix, applied by indexing (:mod:`fusion.surgery`).

    Attributes
    ----------
    plan : numpy.ndarray
        The coupling ``T: (n, m)``, float64.
    permutation : numpy.ndarray or None
        ``(m,)`` int64 for a hard assignment (one-to-one, or a selection of ``m`` of the ``n`` neurons):
        ``permutation[j]`` is the source neuron that becomes target neuron ``j`` (unselected neurons are dropped);
        ``None`` for a soft plan.
    cost : float
        ``<T, C>``, the plan's total cost.
    cost_matrix : torch.Tensor or None
        ``C: (n, m)``, the ground cost the plan was solved on, when there was one.
    correction : {"marginals", "reference"}
        ``"marginals"``: ``P`` and ``Q`` as above (exact for unequal widths); ``"reference"``: otfusion's
        ``--correction``, ``T diag(1/nu)`` on both sides.
    rows : torch.Tensor or None
        ``(n, m)``: the producer matrix when given instead of ``P`` (Intra-Fusion's merged rows).
    orthogonal : bool
        An orthogonal map ``M`` (:mod:`fusion.procrustes`: the residual stream's, keeping the all-ones direction, or
        one per attention head): ``rows = M`` is both matrices (``M^{-T} = M``) and ``plan = (M * M) / n`` only
        shows it; exact like a permutation on a group that admits it.

    References
    ----------
    Singh & Jaggi, "Model Fusion via Optimal Transport", NeurIPS 2020, Sec. 4 (the maps and otfusion's correction).

    Examples
    --------
    >>> import torch
    >>> from fusion import Transport, ground_cost, transport_plan
    >>> a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> b = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    >>> Transport.from_plan(transport_plan(ground_cost(a, b))).permutation  # target j takes source permutation[j]
    array([2, 0, 1])
    >>> merge = Transport.from_plan(transport_plan(ground_cost(a, b[:2])))  # three neurons onto two
    >>> merge.permutation is None, merge.shape
    (True, (3, 2))
    >>> merge.producer.T @ torch.tensor([[1.0], [2.0], [4.0]])  # each target row the barycentre of its sources
    tensor([[3.3333],
            [1.3333]])
    >>> merge.consumer
    tensor([[0.0000, 1.0000],
            [0.5000, 0.5000],
            [1.0000, 0.0000]])
    >>> Transport.selection(3, [2, 0]).permutation  # pruning: keep neurons 2 and 0, in that order
    array([2, 0])
    """

    plan: np.ndarray
    permutation: np.ndarray | None
    cost: float
    cost_matrix: torch.Tensor | None = None
    correction: Correction = "marginals"
    rows: torch.Tensor | None = None
    orthogonal: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.plan.shape[0]), int(self.plan.shape[1]))

    @property
    def exact(self) -> bool:
        """Whether the map keeps a network's function on a group that admits it: a permutation, or an orthogonal
        map (verified like one, :func:`fusion.alignment.verify_alignment`)."""
        return self.permutation is not None or self.orthogonal

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
        (``reference``: otfusion's ``T / beta`` on both sides); an orthogonal map's ``rows`` (``M^{-T} = M``)."""
        if self.orthogonal and self.rows is not None:
            return self.rows
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


@dataclass(frozen=True)
class TransportOptions(Options):
    """How the transport problem between two groups' neurons is posed and solved (:func:`solve_transport`). Defaults
    follow otfusion's published weights-mode configuration (exact OT, Euclidean not squared, uniform marginals, no
    normalisation)."""

    solver: Solver = field(
        default="exact", metadata={"help": "exact OT (a permutation for equal widths) or entropic Sinkhorn"}
    )
    reg: float = field(default=0.01, metadata={"help": "Sinkhorn regularisation, relative to the normalised cost"})
    metric: Metric = field(default="euclidean", metadata={"help": "ground metric between neuron features"})
    normalize_rows: bool = field(default=False, metadata={"help": "scale each neuron's feature to unit norm first"})
    cost_normalization: CostNormalization = field(default="none", metadata={"help": "rescale the cost matrix"})
    marginals: Literal["uniform", "importance"] = field(
        default="uniform", metadata={"help": "neuron masses: equal, or proportional to feature norm"}
    )
    correction: Correction = field(
        default="marginals",
        metadata={"help": "maps from the plan: exact for unequal widths, or otfusion's T/beta on both sides"},
    )

    def check(self, checks: Checks) -> None:
        checks.number("reg", self.reg, 0, above=True)


def solve_transport(
    a: torch.Tensor | Gram, b: torch.Tensor | None = None, options: TransportOptions = TransportOptions()
) -> Transport:
    """Ground cost between features ``a: (n, d)`` and ``b: (m, d)`` (or from their products, a :class:`Gram`),
    transport plan, and the resulting maps, as ``options`` say; ``marginals="importance"`` gives each neuron a mass
    proportional to its feature norm, ``mu_i ∝ |a_i|``, ``nu_j ∝ |b_j|``."""
    gram = a if isinstance(a, Gram) else Gram.of(a, b)
    cost = normalize_cost(gram_cost(gram, options.metric, options.normalize_rows), options.cost_normalization)
    mu = nu = None
    if options.marginals == "importance":
        mu = marginal(len(gram.norms_a), gram.norms_a.sqrt())
        nu = marginal(len(gram.norms_b), gram.norms_b.sqrt())
    plan = transport_plan(cost, mu, nu, options.solver, options.reg)
    cost = cost.detach().cpu()
    total = float((torch.from_numpy(plan) * cost.double()).sum())
    return Transport.from_plan(plan, total, options.correction, cost.float())
