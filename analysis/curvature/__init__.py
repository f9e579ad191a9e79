"""Curvature as linear operators, and the estimators that take any of them (as curvlinops has it).

An operator (:mod:`~analysis.curvature.operator`) is anything with ``size``, ``dtype``, ``device`` and
``matmul(V: (n, k)) -> (n, k)``: the Hessian of a loss (:mod:`~analysis.curvature.hessian`), a dense test matrix
(:class:`MatrixOperator`), a GGN or a Fisher. The estimators take one and explicit numbers (steps, probes, tolerance,
seed), each in a file named after its algorithm: :mod:`~analysis.curvature.lanczos` (top-k eigenpairs),
:mod:`~analysis.curvature.hutchinson` (the trace, plain or deflated), :mod:`~analysis.curvature.slq` (the eigenvalue
density). The PyHessian-like object over a model is :class:`analysis.Hessian`.

    from analysis.curvature import MatrixOperator, lanczos_top_eigenvalues, hutchinson_trace, slq_density

The names below are imported on first use.
"""

from __future__ import annotations

from fusion.exports import lazy_exports

EXPORTS: dict[str, str] = {
    "LinearOperator": "analysis.curvature.operator",
    "MatrixOperator": "analysis.curvature.operator",
    "HessianOperator": "analysis.curvature.hessian",
    "lanczos_top_eigenvalues": "analysis.curvature.lanczos",
    "hutchinson_trace": "analysis.curvature.hutchinson",
    "slq_density": "analysis.curvature.slq",
}
__all__ = sorted(EXPORTS)

__getattr__, __dir__ = lazy_exports("analysis.curvature", globals(), EXPORTS)
