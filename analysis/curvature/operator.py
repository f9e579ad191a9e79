"""Curvature as a linear operator: a symmetric ``A`` on ``R^n`` known only through its products ``A V`` with blocks of
vectors, never formed. Every estimator (:mod:`analysis.curvature.lanczos`, :mod:`analysis.curvature.hutchinson`,
:mod:`analysis.curvature.slq`) takes any :class:`LinearOperator`: the Hessian of a loss
(:class:`analysis.curvature.hessian.HessianOperator`), a test matrix (:class:`MatrixOperator`), a GGN or a Fisher, as
curvlinops does (Dangel et al., "curvlinops").
"""

from __future__ import annotations

from typing import Protocol

import torch

from analysis import AnalysisError


class LinearOperator(Protocol):
    """A symmetric linear map ``A: R^n -> R^n`` given by its products with blocks of vectors.

    ``size`` is ``n``; ``dtype`` and ``device`` are those the products are computed in (the estimators keep their
    vectors there); ``matmul(V)`` returns ``A V`` for ``V: (n, k)``, a ``(n, k)`` tensor, the columns of ``V`` being
    ``k`` vectors multiplied together.
    """

    @property
    def size(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def matmul(self, vectors: torch.Tensor) -> torch.Tensor:
        """``A V``: ``(n, k) -> (n, k)``."""
        ...


def check_block(operator: LinearOperator, vectors: torch.Tensor) -> None:
    """Refuse (:class:`AnalysisError`) anything but a block ``(operator.size, k)`` of vectors."""
    if vectors.dim() != 2 or vectors.shape[0] != operator.size:
        raise AnalysisError(
            f"an operator of size {operator.size} multiplies a block of vectors ({operator.size}, k), got a tensor of "
            f"shape {tuple(vectors.shape)}"
        )


class MatrixOperator:
    """A dense symmetric matrix ``A: (n, n)`` as a :class:`LinearOperator`: ``matmul(V) = A V``, in ``A``'s dtype and
    on its device. For test matrices with known spectra and for small curvature matrices formed outright.

    Raises :class:`AnalysisError` for a matrix that is not square and floating point.

    >>> operator = MatrixOperator(torch.diag(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)))
    >>> operator.size, operator.dtype
    (3, torch.float64)
    >>> operator.matmul(torch.ones(3, 1, dtype=torch.float64)).flatten().tolist()
    [3.0, 1.0, 2.0]
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or not matrix.is_floating_point():
            raise AnalysisError(
                f"a MatrixOperator needs a square floating-point matrix (n, n), got {matrix.dtype} of shape "
                f"{tuple(matrix.shape)}"
            )
        self.matrix = matrix

    @property
    def size(self) -> int:
        return self.matrix.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def matmul(self, vectors: torch.Tensor) -> torch.Tensor:
        """``A V`` for ``V: (n, k)``; returns ``(n, k)``."""
        check_block(self, vectors)
        return self.matrix @ vectors.to(self.device, self.dtype)
