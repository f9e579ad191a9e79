"""Analyses of trained and fused networks, as functions of models and tensors: Hessian spectra
(:mod:`analysis.hessian`, :class:`Hessian`; curvature operators and their estimators in :mod:`analysis.curvature`),
loss landscapes (:mod:`analysis.landscape`), neuron norms (:mod:`analysis.norms`), transport-map summaries
(:mod:`analysis.maps`) and their plotly figures (:mod:`analysis.figures`). Nothing here imports Streamlit, the
workspace or a workflow: the same analyses over workspace models, with stored results, are in :mod:`studies`.

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
    "Hessian": "analysis.hessian_spectrum",
    "LandscapeConfig": "analysis.landscape",
    "linear_interpolation": "analysis.landscape",
    "plane": "analysis.landscape",
    "random_directions": "analysis.landscape",
    "loss_barrier": "analysis.landscape",
    "neuron_norms": "analysis.norms",
}
__all__ = sorted([*EXPORTS, "AnalysisError", "NonFiniteLoss"])


class AnalysisError(FusionError, ValueError):
    """An analysis cannot run on the given model, data or options (no trainable parameters, k too large...)."""


__getattr__, __dir__ = lazy_exports("analysis", globals(), EXPORTS)
