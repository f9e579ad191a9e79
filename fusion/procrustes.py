"""Orthogonal maps of a neuron group that keep the all-ones direction, and the one that best aligns two feature sets.

A LayerNorm'd residual stream admits more than permutations (:mod:`fusion.layernorm`): any orthogonal ``R: (d, d)``
with ``R 1 = 1`` commutes with LayerNorm's centring (``mean(R x) = 1^T R x / d = 1^T x / d``, as ``R^T 1 = 1``) and
with its scaling (``|R x| = |x|``), so once the gains are folded into the layers that read the normalised stream,
``W -> R W`` on every writer and ``V -> V R^T`` on every reader keeps the function (Theus et al., "Generalized Linear
Mode Connectivity for Transformers", NeurIPS 2025; Ashkboos et al., "SliceGPT", ICLR 2024, for the rotation of a
LayerNorm'd stream). These maps are ``R = 1 1^T / d + E R' E^T`` for ``E: (d, d - 1)`` an orthonormal basis of the
complement of ``1`` and ``R'`` any orthogonal ``(d - 1) x (d - 1)`` matrix.

As a :class:`fusion.transport.Transport` from source neuron ``i`` to target neuron ``j`` the map is ``M = R^T``
(``new_j = sum_i M_ij old_i``); its plan ``M / d`` has rows and columns summing to ``1 / d`` like a permutation's
``P / d``, so both of the transport's matrices are ``M``.
"""

from __future__ import annotations

import numpy as np
import torch

from fusion.transport import Gram, Transport


def ones_complement(size: int) -> np.ndarray:
    """``E: (d, d - 1)``, float64: an orthonormal basis of the vectors orthogonal to ``1`` (``E^T 1 = 0``,
    ``E^T E = I``), from the QR factorisation of ``[1, I]``."""
    basis, _ = np.linalg.qr(np.concatenate([np.ones((size, 1)), np.eye(size)[:, : size - 1]], axis=1))
    return basis[:, 1:]


def orthogonal_transport(matrix: np.ndarray, cost: float = 0.0) -> Transport:
    """The :class:`~fusion.transport.Transport` of an orthogonal ``M: (d, d)`` with ``M 1 = 1`` (module docstring);
    a matrix within ``1e-4`` of a permutation is taken as that permutation, applied by indexing like every hard
    map."""
    matrix = np.asarray(matrix, dtype=np.float64)
    size = len(matrix)
    permutation = np.zeros((size, size))
    permutation[matrix.argmax(0), np.arange(size)] = 1.0
    if np.abs(matrix - permutation).max() < 1e-4:
        return Transport.from_plan(permutation / size, cost)
    transport = Transport.from_plan(matrix / size, cost)
    return Transport(transport.plan, None, transport.cost, rows=torch.from_numpy(matrix).float(), orthogonal=True)


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
    >>> found.permutation is None, np.abs(found.rows.double().numpy().T - rotation).max() < 1e-5
    (True, True)
    >>> np.abs(found.rows.double().numpy() @ np.ones(6) - 1).max() < 1e-6  # keeps the all-ones direction
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


def random_orthogonal(size: int, seed: int) -> np.ndarray:
    """A random orthogonal ``R: (d, d)`` with ``R 1 = 1`` (``R' = `` the Q factor of a seeded Gaussian matrix)."""
    gaussian = np.random.default_rng(seed).standard_normal((size - 1, size - 1))
    rotation, upper = np.linalg.qr(gaussian)
    rotation *= np.sign(np.diag(upper))
    basis = ones_complement(size)
    return np.full((size, size), 1.0 / size) + basis @ rotation @ basis.T
