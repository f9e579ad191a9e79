"""Analyses of trained and fused networks: Hessian spectra (:mod:`analysis.hessian`), loss landscapes
(:mod:`analysis.landscape`), neuron norms (:mod:`analysis.norms`), method comparisons (:mod:`analysis.comparison`),
the same over workspace models with stored results (:mod:`analysis.runs`), and their plotly figures
(:mod:`analysis.figures`). Nothing here imports Streamlit.

    from analysis import hessian_report, HessianConfig, linear_interpolation, LandscapeConfig

The names below are imported on first use.
"""

from __future__ import annotations

from fusion.errors import FusionError
from fusion.errors import NonFiniteLoss as NonFiniteLoss
from fusion.exports import lazy_exports

EXPORTS: dict[str, str] = {
    "HessianConfig": "analysis.hessian_config",
    "HessianReport": "analysis.hessian",
    "hessian_report": "analysis.hessian",
    "hessian_top_eigenvalues": "analysis.hessian_estimators",
    "hessian_trace": "analysis.hessian_estimators",
    "hessian_eigenvalue_density": "analysis.hessian_estimators",
    "LandscapeConfig": "analysis.landscape",
    "linear_interpolation": "analysis.landscape",
    "plane": "analysis.landscape",
    "random_directions": "analysis.landscape",
    "loss_barrier": "analysis.landscape",
    "neuron_norms": "analysis.norms",
    "compare_methods": "analysis.comparison",
    "compare_fusion": "analysis.comparison",
    "FusionComparison": "analysis.comparison",
    "Score": "analysis.scores",
    "hessian_of": "analysis.runs",
    "landscape_of": "analysis.runs",
    "fusion_landscape": "analysis.runs",
}
__all__ = sorted([*EXPORTS, "AnalysisError", "NonFiniteLoss"])


class AnalysisError(FusionError, ValueError):
    """An analysis cannot run on the given model, data or options (no trainable parameters, k too large...)."""


__getattr__, __dir__ = lazy_exports("analysis", globals(), EXPORTS)
