"""Analyses of trained and fused networks: Hessian spectra (:mod:`analysis.hessian`), loss landscapes
(:mod:`analysis.landscape`) and their plotly figures (:mod:`analysis.figures`). Nothing here imports Streamlit."""

from fusion.errors import FusionError


class AnalysisError(FusionError, ValueError):
    """An analysis cannot run on the given model, data or options (no trainable parameters, k too large...)."""


class NonFiniteLoss(AnalysisError):
    """The loss, or a Hessian-vector product, is NaN or infinite at the point analysed."""
