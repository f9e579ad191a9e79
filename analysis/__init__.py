"""Analyses of trained and fused networks: Hessian spectra (:mod:`analysis.hessian`), loss landscapes
(:mod:`analysis.landscape`) and their plotly figures (:mod:`analysis.figures`). Nothing here imports Streamlit."""

from fusion.errors import FusionError, NonFiniteLoss

__all__ = ["AnalysisError", "NonFiniteLoss"]


class AnalysisError(FusionError, ValueError):
    """An analysis cannot run on the given model, data or options (no trainable parameters, k too large...)."""
