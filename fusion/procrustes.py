"""Orthogonal maps of a neuron group that keep the all-ones direction, and the one that best aligns two feature sets.

A LayerNorm'd residual stream admits more than permutations (:mod:`fusion.layernorm`): any orthogonal ``R: (d, d)``
with ``R 1 = 1`` commutes with LayerNorm's centring (``mean(R x) = 1^T R x / d = 1^T x / d``, as ``R^T 1 = 1``) and
with its scaling (``|R x| = |x|``), so once the gains are folded into the layers that read the normalised stream,
``W -> R W`` on every writer and ``V -> V R^T`` on every reader keeps the function (Theus et al., "Generalized Linear
Mode Connectivity for Transformers", NeurIPS 2025; Ashkboos et al., "SliceGPT", ICLR 2024, for the rotation of a
LayerNorm'd stream). These maps are ``R = 1 1^T / d + E R' E^T`` for ``E: (d, d - 1)`` an orthonormal basis of the
complement of ``1`` and ``R'`` any orthogonal ``(d - 1) x (d - 1)`` matrix.

As a :class:`fusion.transport.Transport` from source neuron ``i`` to target neuron ``j`` the map is ``M = R^T``
(``new_j = sum_i M_ij old_i``), both of the transport's matrices (``M^{-T} = M``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fusion.transport import Gram, Transport, assignment

SNAP = 0.05
"""An orthogonal map whose every entry is within this of a permutation matrix's is taken as that permutation: the
permutation keeps the function as exactly, is applied by indexing, and is where the weights-mode sweeps, which
re-solve each group against the others' latest maps, head when the models differ by a permutation."""


def ones_complement(size: int) -> np.ndarray:
    """``E: (d, d - 1)``, float64: an orthonormal basis of the vectors orthogonal to ``1`` (``E^T 1 = 0``,
    ``E^T E = I``), from the QR factorisation of ``[1, I]``."""
    basis, _ = np.linalg.qr(np.concatenate([np.ones((size, 1)), np.eye(size)[:, : size - 1]], axis=1))
    return basis[:, 1:]


def orthogonal_transport(matrix: np.ndarray, cost: float = 0.0) -> Transport:
    """The :class:`~fusion.transport.Transport` of an orthogonal ``M: (d, d)`` (module docstring): ``rows = M`` and
    ``plan = (M * M) / d``, the squared entries (doubly stochastic like a permutation's ``P / d``: how much of each
    source neuron each target receives, for the views); a matrix within :data:`SNAP` of a permutation is taken as
    that permutation."""
    matrix = np.asarray(matrix, dtype=np.float64)
    size = len(matrix)
    permutation = np.zeros((size, size))
    permutation[matrix.argmax(0), np.arange(size)] = 1.0
    if np.abs(matrix - permutation).max() < SNAP:
        return Transport.from_plan(permutation / size, cost)
    return Transport(matrix * matrix / size, None, float(cost), rows=torch.from_numpy(matrix).float(), orthogonal=True)


def orthogonal_procrustes(gram: Gram) -> Transport:
    """The orthogonal map keeping ``1`` that best takes source features ``a_i`` onto reference features ``b_j``.

    .. math::

        R^\\star = \\arg\\min_{R^\\top R = I,\\ R 1 = 1} \\| R A - B \\|_F^2
                 = \\frac{1}{d} 1 1^\\top + E \\, V U^\\top E^\\top,
        \\qquad U S V^\\top = E^\\top (A B^\\top) E,

    with ``A: (d, F)`` and ``B: (d, F)`` the features as rows (only their products ``A B^T``, ``gram.dot``, are read)
    and ``E`` :func:`ones_complement`: ``|RA - B|^2 = const - 2 tr(R A B^T)``, and on ``R = 1 1^T / d + E R' E^T`` the
    trace is ``const + tr(R' E^T A B^T E)``, maximised by the polar factor ``R' = V U^T`` (Schönemann, "A generalized
    solution of the orthogonal Procrustes problem", Psychometrika 1966). The transport is ``M = R^T``
    (:func:`orthogonal_transport`); its ``cost`` is ``|RA - B|_F^2``.

    Examples
    --------
    A rotated copy of a feature set is rotated back:

    >>> import numpy as np
    >>> import torch
    >>> from fusion.procrustes import orthogonal_procrustes, random_orthogonal
    >>> from fusion.transport import Gram
    >>> b = torch.randn(6, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> rotation = random_orthogonal(6, seed=1)
    >>> a = torch.from_numpy(rotation.T) @ b  # the source is the reference rotated by R^T
    >>> found = orthogonal_procrustes(Gram.of(a, b))
    >>> found.permutation is None, bool(np.abs(found.rows.double().numpy().T - rotation).max() < 1e-5)
    (True, True)
    >>> bool(np.abs(found.rows.double().numpy() @ np.ones(6) - 1).max() < 1e-6)  # keeps the all-ones direction
    True
    """
    dot = gram.dot.double().cpu().numpy()
    size = len(dot)
    if size != dot.shape[1]:
        raise ValueError(f"orthogonal maps are between groups of one width, got {dot.shape}")
    basis = ones_complement(size)
    u, _, vt = np.linalg.svd(basis.T @ dot @ basis)
    rotation = np.full((size, size), 1.0 / size) + basis @ (vt.T @ u.T) @ basis.T
    cost = float(gram.norms_a.double().sum() + gram.norms_b.double().sum()) - 2.0 * float(np.trace(rotation @ dot))
    return orthogonal_transport(rotation.T, cost)


def polar(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """``(U V^T, sum(S))`` for ``matrix = U S V^T``: the orthogonal factor of its polar decomposition, the
    orthogonal ``M`` maximising ``tr(M^T matrix)``, and that maximum (the nuclear norm)."""
    u, singular, vt = np.linalg.svd(matrix)
    return u @ vt, float(singular.sum())


def head_rotations(grams: Sequence[Gram], heads: int) -> list[Transport]:
    """Orthogonal maps of one attention's groups that keep its heads whole: one assignment of heads shared by the
    groups, and per group an orthogonal map inside every matched pair of heads.

    Within a head, ``q -> A q`` and ``k -> A k`` keep every score ``q^T k`` for any orthogonal ``A`` (a subgroup of
    the invertible maps ``q -> A q``, ``k -> A^{-T} k``), and ``v -> B v`` with the output projection's columns
    ``W_o -> W_o B^T`` keep the head's output (Theus et al., "Generalized Linear Mode Connectivity for
    Transformers", NeurIPS 2025). With ``N_ab`` the products of source head ``a``'s features with reference head
    ``b``'s (``w x w`` blocks of each gram, ``w = d / heads``), the pair's best fit ``min_A |A F_a - F_b|^2`` is
    ``|F_a|^2 + |F_b|^2 - 2 |N_ab|_*`` (nuclear norm), summed over the groups; the heads are assigned by the least
    total cost, and each matched pair's map is the polar factor of ``N_ab`` (:func:`orthogonal_procrustes` without the
    all-ones constraint). Returns one :class:`~fusion.transport.Transport` per gram, block-orthogonal ``M``."""
    size = len(grams[0].dot)
    width = size // heads
    dots = [gram.dot.double().cpu().numpy() for gram in grams]
    blocks = [
        [[dot[a * width : (a + 1) * width, b * width : (b + 1) * width] for b in range(heads)] for a in range(heads)]
        for dot in dots
    ]
    norms = [
        (
            g.norms_a.double().cpu().numpy().reshape(heads, width).sum(1),
            g.norms_b.double().cpu().numpy().reshape(heads, width).sum(1),
        )
        for g in grams
    ]
    cost = np.zeros((heads, heads))
    for pairs, (norm_a, norm_b) in zip(blocks, norms):
        for a in range(heads):
            for b in range(heads):
                cost[a, b] += norm_a[a] + norm_b[b] - 2.0 * polar(pairs[a][b])[1]
    order, _ = assignment(cost)
    transports = []
    for pairs in blocks:
        matrix = np.zeros((size, size))
        total = 0.0
        for a, b in enumerate(order):
            rotation, fit = polar(pairs[a][b])
            matrix[a * width : (a + 1) * width, b * width : (b + 1) * width] = rotation
            total += fit
        transports.append(orthogonal_transport(matrix, -2.0 * total))
    return transports


def random_orthogonal(size: int, seed: int, keep_ones: bool = True) -> np.ndarray:
    """A random orthogonal ``R: (d, d)`` (Haar: the Q factor of a seeded Gaussian matrix, signs fixed), with
    ``R 1 = 1`` unless ``keep_ones`` is false."""
    gaussian = np.random.default_rng(seed).standard_normal((size - keep_ones, size - keep_ones))
    rotation, upper = np.linalg.qr(gaussian)
    rotation *= np.sign(np.diag(upper))
    if not keep_ones:
        return rotation
    basis = ones_complement(size)
    return np.full((size, size), 1.0 / size) + basis @ rotation @ basis.T
